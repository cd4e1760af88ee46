"""Safe file I/O shared by the engine and the daemon: atomic writes, pickle-free loads.

Every output is written to a temporary file in the destination directory, flushed and
fsync'ed, then renamed over the target, so a crash never leaves a truncated file under the
final name. A kill -9 mid-write leaves the temp file (`.<name>.<8 random chars>.tmp`):
`remove_temp_files` deletes those once no writer can own them. A full disk is a
`DiskFullError` naming the directory. Every `.pt` read goes through
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "DiskFullError",
    "OutsideRootError",
    "SpecialFileError",
    "TEMP_RE",
    "UnsafeFileError",
    "atomic_write",
    "hf_hub_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "file_fingerprint",
    "is_disk_full",
    "open_regular",
    "regular_file_stat",
    "remove_temp_files",
    "require_free_space",
    "safe_torch_load",
]


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()  # read once at import: os.umask can only be read by setting it


class UnsafeFileError(ValueError):
    """A file could not be read safely (pickled objects, truncated or not a torch file)."""

    def __init__(self, path: Path | str, problem: str, fix: str = "") -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# the temp files `atomic_write` makes: tempfile.mkstemp(prefix=".<name>.", suffix=".tmp"),
# whose random part is 8 characters of [a-z0-9_]
TEMP_RE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")


class DiskFullError(OSError):
    """The filesystem of `directory` is full (ENOSPC / EDQUOT), or has too little space left
    for the next output. Its text is one sentence with the fix (`detail`, when given, says
    how much was free and needed)."""

    def __init__(self, directory: Path | str, detail: str = "") -> None:
        self.directory = Path(directory)
        self.message = (f"disk full in {self.directory}" + (f" ({detail})" if detail else "")
                        + ": free space or lower retention")
        super().__init__(errno.ENOSPC, self.message)

    def __str__(self) -> str:
        return self.message


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that means no space (ENOSPC) or no quota (EDQUOT) is left."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def require_free_space(directory: Path | str, needed: int, what: str) -> None:
    """Raise DiskFullError when the filesystem of `directory` has fewer than `needed` bytes
    available (to this user), saying how much is free and that `what` needs about `needed`."""
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DiskFullError(directory, f"{_mib(free)} free, {what} needs about {_mib(needed)}")


def remove_temp_files(directory: Path | str, before: float) -> list[Path]:
    """Delete the temp files of killed `atomic_write` calls in `directory`: regular files
    named as TEMP_RE says, last modified before `before` (unix seconds). Call it only when
    no writer works in `directory`; the time limit spares a file someone writes right now.
    Returns the deleted paths."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            if (TEMP_RE.match(entry.name) and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < before):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # gone meanwhile
            continue
    return removed


def atomic_write(path: Path | str, writer: Callable[[BinaryIO], None]) -> Path:
    """Call `writer(fileobj)` on a temp file next to `path`, fsync it, rename it over `path`.

    Creates parent directories. The temp file is removed if `writer` raises; a full disk
    raises DiskFullError (naming the directory), and `path` keeps its old content. Returns
    `path`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path.parent) from exc
        raise
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            raise DiskFullError(path.parent) from exc
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Atomically replace `path` with `data`."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Atomically replace `path` with UTF-8 `text`."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(path: Path | str, obj: Any) -> Path:
    """Atomically `torch.save(obj)` to `path` (serialised in memory first, then renamed)."""
    import torch  # imported here so that the daemon can use this module without torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: Path | str, *, what: str = "file", fix: str = "") -> Any:
    """Load a `.pt`/`.pth` file with `weights_only=True` onto the CPU.

    Raises FileNotFoundError for a missing file and UnsafeFileError when the file is
    truncated, not a torch file, or contains pickled objects beyond tensors and plain
    containers. `what` names the file's role in the message (e.g. "generator checkpoint").
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}" + (f" ({fix})" if fix else ""))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "pickle" in text.lower():
            problem = f"{what} contains pickled Python objects and was refused"
        else:
            problem = f"{what} is truncated or not a PyTorch file ({type(exc).__name__}: {text.splitlines()[0] if text else ''})"
        raise UnsafeFileError(path, problem, fix or "re-download or re-export the file") from exc

_FINGERPRINT_CHUNK = 1 << 20  # bytes read from each end of a weights file


def file_fingerprint(path: Path | str) -> str:
    """Cheap content fingerprint (hex sha256) of a large weights file.

    Hashes the size, the first MiB and the last MiB. PyTorch checkpoints and safetensors
    files keep per-tensor CRC32s / offsets in the zip central directory or header, which lie
    in those regions, so any change of a tensor changes the fingerprint; a full hash of a
    multi-GB file would cost seconds on every load.
    """
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(f"{size}:".encode())
    with path.open("rb") as f:
        h.update(f.read(_FINGERPRINT_CHUNK))
        if size > _FINGERPRINT_CHUNK:
            f.seek(max(_FINGERPRINT_CHUNK, size - _FINGERPRINT_CHUNK))
            h.update(f.read())
    return h.hexdigest()


# -- reading files users drop: regular files inside their directory only ----------------

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


class SpecialFileError(OSError):
    """A path names a FIFO, socket, device or directory where a regular file is expected.

    `kind` says which in words ("a FIFO (named pipe)"). Such a path is never opened:
    opening a FIFO blocks until someone writes to it, a device may never end.
    """

    def __init__(self, path: Path | str, kind: str) -> None:
        super().__init__(f"{path}: is {kind}, not a regular file")
        self.filename = str(path)
        self.kind = kind


class OutsideRootError(OSError):
    """A path (a symbolic link, or one through a linked directory) resolves outside the
    directory it must stay in; `target` is where it leads. It is never opened."""

    def __init__(self, path: Path | str, target: str, root: str) -> None:
        super().__init__(f"{path}: leads to {target}, outside {root}")
        self.filename = str(path)
        self.target = target
        self.root = root


def _kind(mode: int) -> str:
    return next((k for test, k in _KINDS if test(mode)), "not a regular file")


def regular_file_stat(path: Path | str, root: Path | str | None = None) -> os.stat_result:
    """Check, without opening it, that `path` is a regular file (links followed) whose real
    path lies inside `root` (when given; links that stay inside are fine). Returns its
    stat. Raises OutsideRootError, SpecialFileError, or the OSError of `os.stat`
    (FileNotFoundError for a missing file or a dangling link).
    """
    if root is not None:
        real, real_root = os.path.realpath(path), os.path.realpath(root)
        if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
            raise OutsideRootError(path, real, real_root)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise SpecialFileError(path, _kind(st.st_mode))
    return st


def open_regular(path: Path | str, root: Path | str | None = None) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file inside `root` (see
    `regular_file_stat`); never blocks and never opens anything else.

    The checks run before the open; the open itself is non-blocking (a FIFO swapped in
    meanwhile does not hang it) and the descriptor is checked again: still a regular file,
    and, with `root`, the same file the checks saw. Returns a binary file object the
    caller closes (its `name` is `path`). Raises what `regular_file_stat` raises, or the
    OSError of the open (PermissionError for a file the process may not read).
    """
    before = regular_file_stat(path, root)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SpecialFileError(path, _kind(st.st_mode))
        if root is not None and (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            again = regular_file_stat(path, root)  # replaced in between: check the new one
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                raise OSError(errno.EAGAIN, "changed while it was being opened", str(path))
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
        f.raw.name = os.fspath(path)  # as open() would name it (messages, f.name)
        return f
    except BaseException:
        os.close(fd)
        raise


def hf_hub_dir() -> Path:
    """The Hugging Face hub cache directory (HF_HUB_CACHE > HF_HOME/hub > XDG / ~/.cache)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"
