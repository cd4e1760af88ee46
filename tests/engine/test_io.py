"""Atomic writers on a full disk, and the clean-up of the temp files killed writers leave."""

from __future__ import annotations

import os
import tempfile
import time

import pytest

from selva_engine.io import (
    DiskFullError,
    atomic_write_bytes,
    is_disk_full,
    remove_temp_files,
    require_free_space,
)
from tests.tmpfs import fill, small_tmpfs


def test_atomic_write_on_a_full_disk_names_the_directory_and_keeps_the_old_file(tmp_path) -> None:
    with small_tmpfs(tmp_path / "fs", 256 << 10) as fs:
        atomic_write_bytes(fs / "meta.json", b"old")
        with pytest.raises(DiskFullError) as info:
            atomic_write_bytes(fs / "meta.json", b"x" * (512 << 10))
        assert str(info.value) == f"disk full in {fs}: free space or lower retention"
        assert is_disk_full(info.value) and info.value.directory == fs
        assert (fs / "meta.json").read_bytes() == b"old"  # nothing partial under the final name
        assert sorted(p.name for p in fs.iterdir()) == ["meta.json"]  # no temp file left


def test_require_free_space(tmp_path) -> None:
    with small_tmpfs(tmp_path / "fs", 1 << 20) as fs:
        require_free_space(fs, 100 << 10, "a checkpoint")
        fill(fs, leave=64 << 10)
        with pytest.raises(DiskFullError, match=r"^disk full in .*fs \(.* free, a checkpoint needs "
                                                r"about .*\): free space or lower retention$"):
            require_free_space(fs, 100 << 10, "a checkpoint")


def _temp(directory, target: str, age_s: float) -> str:
    """A temp file exactly as the atomic writer names it, last modified `age_s` ago."""
    fd, path = tempfile.mkstemp(prefix=f".{target}.", suffix=".tmp", dir=directory)
    os.write(fd, b"partial")
    os.close(fd)
    then = time.time() - age_s
    os.utime(path, (then, then))
    return os.path.basename(path)


def test_remove_temp_files_takes_only_stale_writer_temps(tmp_path) -> None:
    stale = [_temp(tmp_path, "adapter_step00120.pt", 600), _temp(tmp_path, "sample_step00120.wav", 5)]
    live = _temp(tmp_path, "meta.json", -30)  # written after the cut-off: someone else's
    keep = ["notes.tmp", ".hidden.tmp", "adapter_step00120.pt", ".adapter_step00120.pt",
            ".run.toml.tmp"]
    for name in keep:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (0, 0))
    (tmp_path / ".dir.abcdefgh.tmp").mkdir()
    removed = remove_temp_files(tmp_path, before=time.time())
    assert sorted(p.name for p in removed) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live, *keep, ".dir.abcdefgh.tmp"])
    assert remove_temp_files(tmp_path / "missing", before=time.time()) == []
