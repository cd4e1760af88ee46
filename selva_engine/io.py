"""Safe file I/O shared by the engine and the daemon: atomic writes, pickle-free loads.

Every output is written to a temporary file in the destination directory, flushed and
fsync'ed, then renamed over the target, so a crash never leaves a truncated file under the
final name. Every `.pt` read goes through `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "UnsafeFileError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_torch_save",
    "file_fingerprint",
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


def atomic_write(path: Path | str, writer: Callable[[BinaryIO], None]) -> Path:
    """Call `writer(fileobj)` on a temp file next to `path`, fsync it, rename it over `path`.

    Creates parent directories. The temp file is removed if `writer` raises. Returns `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
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

