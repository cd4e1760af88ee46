"""Hostile dataset files for tests: compressed .npz bombs, unprivileged reads, no hanging.

Every helper builds real files (a real zip written by `zipfile`, real FIFOs, real links);
nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

NOBODY = 65534  # uid/gid of "nobody" on Debian/Ubuntu


def write_npz_bomb(path: Path, shape: tuple[int, ...] = (1, 65536, 1024),
                   key: str = "clip_features", dtype: Any = np.float32,
                   others: dict[str, np.ndarray] | None = None) -> Path:
    """Write an .npz (deflate, as `np.savez_compressed`) whose `key` declares `shape` of
    zeros: a (1, 262144, 1024) float32 member is 1 GiB once loaded but ~1 MB on disk. The
    zeros are streamed, so writing it costs no memory. `others` are written as usual
    (default: a valid sync_features, or clip_features when the bomb is sync_features)."""
    if others is None:
        others = ({"sync_features": np.zeros((1, 192, 768), np.float32)} if key != "sync_features"
                  else {"clip_features": np.zeros((1, 64, 1024), np.float32)})
    dt = np.dtype(dtype)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{key}.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {
                "descr": np.lib.format.dtype_to_descr(dt), "fortran_order": False,
                "shape": tuple(shape)})
            left = int(np.prod(shape)) * dt.itemsize
            chunk = bytes(1 << 22)
            while left > 0:
                member.write(chunk[:left])
                left -= len(chunk)
        for name, arr in others.items():
            with zf.open(f"{name}.npy", "w") as member:
                np.lib.format.write_array(member, arr, allow_pickle=False)
    return path


def write_npz_header_bomb(path: Path, shape: tuple[int, ...] = (1, 1 << 22, 1024),
                          key: str = "clip_features") -> Path:
    """An .npz whose `key` member holds only an .npy header declaring `shape` float32 (16
    GiB by default) and no data: what a reader that trusts headers would try to allocate.
    The other features array is valid."""
    other = "sync_features" if key != "sync_features" else "clip_features"
    arrays = {"sync_features": np.zeros((1, 192, 768), np.float32),
              "clip_features": np.zeros((1, 64, 1024), np.float32)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{key}.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, {
                "descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
        with zf.open(f"{other}.npy", "w") as member:
            np.lib.format.write_array(member, arrays[other], allow_pickle=False)
    return path


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail with TimeoutError instead of hanging (e.g. on opening a FIFO nobody writes to):
    SIGALRM interrupts a blocking open() of the main thread."""
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"still blocked after {seconds} s (a FIFO was opened?)")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def world_readable_dir(parent: Path = Path("/tmp")) -> Path:
    """A fresh directory others may traverse (pytest's tmp_path is private to its owner),
    for files an unprivileged child must reach. The caller removes it."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="selvad-hostile-", dir=parent))
    path.chmod(0o755)
    return path


def run_unprivileged(fn: Callable[..., Any], *args: Any) -> Any:
    """Return `fn(*args)` (JSON-able) computed without the power to read what file
    permissions forbid. Root ignores `chmod 000`, so as root the call runs in a forked child
    that first drops to uid/gid nobody (os.setuid); it runs once in this process before
    (as root), so every module it needs is imported before the child loses access to them.
    As any other user it simply runs here. An exception in the child is raised here as
    RuntimeError with its repr."""
    if os.geteuid() != 0:
        return fn(*args)
    fn(*args)  # warm up: imports happen while the interpreter can still read its files
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            out = {"value": fn(*args)}
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            out = {"error": repr(exc)}
        os.write(wfd, json.dumps(out, default=str).encode())
        os._exit(0)
    os.close(wfd)
    chunks = []
    while data := os.read(rfd, 1 << 16):
        chunks.append(data)
    os.close(rfd)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "the child wrote nothing"}')
    if "error" in result:
        raise RuntimeError(result["error"])
    return result["value"]
