"""Real small filesystems for disk-full tests: a tmpfs of a given size, and a ballast file
that fills it. Mounting needs root (CAP_SYS_ADMIN); where it is not permitted the test is
skipped with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "small_tmpfs"]


@contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    """Mount a tmpfs of `size_bytes` on `path` (created) for the block; always unmounted
    after (lazily when a process still holds it). Skips the test when mount is refused."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(done.stderr or done.stdout).strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(directory: Path, leave: int = 0, name: str = "ballast.bin") -> Path:
    """Write `directory/name` until the filesystem has at most `leave` bytes free (0: until
    a write fails with ENOSPC). Returns the ballast file; delete it to free the space."""
    path = directory / name
    chunk = b"\0" * (64 << 10)
    with open(path, "ab", buffering=0) as f:  # unbuffered: a failed write leaves nothing pending
        while (free := shutil.disk_usage(directory).free) > leave:
            try:
                f.write(chunk[: max(min(len(chunk), free - leave), 1)])
            except OSError:
                break
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    return path
