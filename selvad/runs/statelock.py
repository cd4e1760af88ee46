"""One daemon per state directory: an OS-level lock on `<state_dir>/selvad.lock`.

Two daemons on one state directory would requeue each other's runs, stop each other's
children and train the same run into the same directory. `StateLock.acquire` takes
`fcntl.flock(LOCK_EX | LOCK_NB)` on the lock file and writes the holder's pid into it. The
kernel drops the lock when the process ends, however it ends (kill -9 included), so there
is never a stale lock to clean up; the file itself stays. The descriptor is not inherited
by run children (Python opens it non-inheritable and subprocess closes other fds), so a
child outliving its daemon does not keep the lock. CLI commands (status, enqueue, cancel)
never take this lock: they talk to the queue database, which is safe to share.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["LOCK_NAME", "StateDirLocked", "StateLock", "daemon_running"]

LOCK_NAME = "selvad.lock"


class StateDirLocked(RuntimeError):
    """Another live process holds the lock of `state_dir` (its pid, when readable)."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir, self.pid = state_dir, pid
        holder = f"selvad (pid {pid})" if pid is not None else "selvad process"
        super().__init__(
            f"another {holder} is already running on state directory {state_dir}; stop it "
            f"first (`systemctl stop selvad` or `kill {pid if pid is not None else 'PID'}`), "
            "or give this daemon its own paths.state_dir")


class StateLock:
    """The held lock of one state directory; `release()` (or process exit) frees it."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, state_dir: Path) -> StateLock:
        """Lock `state_dir` (created if missing) for this process and record our pid in
        the lock file. Raises StateDirLocked, naming the holder's pid, when another live
        process holds it; OSError when the file cannot be opened."""
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateDirLocked(state_dir, holder_pid(path)) from None
        except OSError:
            os.close(fd)
            raise
        # Write over the old pid, then cut the rest: a reader never sees an empty file.
        text = f"{os.getpid()}\n".encode()
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))
        return cls(path, fd)

    def release(self) -> None:
        """Free the lock (the file stays: removing it would race with a starting daemon)."""
        if self._fd >= 0:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = -1


def holder_pid(path: Path) -> int | None:
    """The pid written in lock file `path` (None when missing or unreadable)."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def daemon_running(state_dir: Path, locks: Path = Path("/proc/locks")) -> bool | None:
    """Whether a daemon holds `state_dir`'s lock, without touching the lock (a probe that
    took it, even shared, could make a starting daemon think another one runs): the
    kernel's lock table `locks` lists the flock on the lock file's inode. None when the
    table cannot be read (not Linux)."""
    try:
        inode = (state_dir / LOCK_NAME).stat().st_ino
    except OSError:
        return False  # never started here (or the file is gone): nobody holds it
    try:
        table = locks.read_text()
    except OSError:
        return None
    for line in table.splitlines():
        fields = line.split()
        if "FLOCK" in fields and any(f.rsplit(":", 1)[-1] == str(inode) for f in fields
                                     if f.count(":") == 2):
            return True
    return False
