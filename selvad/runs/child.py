"""The child-process side of a run: a trampoline into selva_engine.cli, and orphan clean-up.

The worker starts ``python -m selvad.runs.child --parent PID <train|extract> ...``. The
trampoline arms Linux's PR_SET_PDEATHSIG so that the trainer gets SIGTERM, saves a
checkpoint of its current step and exits if the daemon dies (even by kill -9), then hands
the remaining arguments to `selva_engine.cli.main` unchanged. `stop_orphan` is the daemon's
start-up check that no child of an earlier daemon still writes into a run's directory.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from selvad.config.daemon import DaemonConfig
from selvad.runs.queue import Run
from selvad.runs.rundir import state_dir_for

__all__ = ["stop_orphan"]

_PR_SET_PDEATHSIG = 1


def stop_orphan(cfg: DaemonConfig, run: Run, timeout: float = 60.0) -> int | None:
    """Make sure no child of an earlier daemon still works on `run` (found interrupted at
    start-up). A live one (pid file under the run's state dir, command line of this
    trampoline) gets SIGTERM, so it checkpoints, and SIGKILL after `timeout` seconds.
    Returns the pid that was stopped, or None when there was none."""
    pid_file = state_dir_for(cfg, run) / "child.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        pid_file.unlink(missing_ok=True)
        return None
    if b"selvad.runs.child" not in cmdline and b"selvad.child" not in cmdline:  # also 0.1 children
        pid_file.unlink(missing_ok=True)
        return None
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return pid


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie (its parent died too) has already stopped working


def _set_parent_death_signal(parent: int) -> None:
    """Ask Linux to SIGTERM this process when the daemon dies (kill -9 included), so the
    trainer checkpoints and exits instead of training on as an orphan."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return  # not Linux: the daemon's start-up check (stop_orphan) handles orphans
    if os.getppid() != parent:  # the daemon died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class _PipeGuard:
    """stdout that survives the daemon's death: once the pipe breaks (EPIPE), fd 1 is
    pointed at /dev/null and writing goes on, so the trainer reaches its next step, sees
    the SIGTERM from PR_SET_PDEATHSIG and saves a checkpoint instead of crashing."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def _guard(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
            try:
                return fn(*args)
            except OSError:
                return None

    def write(self, text: str) -> int:
        self._guard(self._stream.write, text)
        return len(text)

    def flush(self) -> None:
        self._guard(self._stream.flush)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: list[str]) -> int:
    """`python -m selvad.runs.child --parent PID <train|extract> ...`: arm the parent-death
    signal, then run selva_engine.cli with the remaining arguments; returns its status."""
    if len(argv) >= 2 and argv[0] == "--parent":
        _set_parent_death_signal(int(argv[1]))
        argv = argv[2:]
    sys.stdout = _PipeGuard(sys.stdout)
    from selva_engine.cli import main as engine_main

    return engine_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
