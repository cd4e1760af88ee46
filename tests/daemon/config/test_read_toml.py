"""Reading config and job files opens regular files only: a FIFO, a device or a directory
named `*.toml` is refused at once with a message naming the file and the fix (no hang)."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from selvad.config.daemon import DaemonConfig, load_config
from selvad.config.jobs import JobError, load_job
from selvad.config.schema import MAX_TOML_BYTES, ConfigError, read_toml


def _release(fifo: Path) -> None:
    """Unblock a reader stuck on `fifo` (only if the code under test hung): open the write
    end without blocking and close it, so the reader sees end of file."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # no reader: nothing hangs
        pass


def _call_briefly(fn: Callable[[], Any], fifo: Path, seconds: float = 3.0) -> BaseException:
    """Run `fn` in a thread; fail if it is still running after `seconds` (it hangs)."""
    box: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    hung = t.is_alive()
    if hung:
        _release(fifo)
        t.join(5)
    assert not hung, f"reading {fifo} blocked for more than {seconds} s"
    assert box, "reading a FIFO must raise"
    return box[0]


@pytest.fixture
def fifo_job(daemon_cfg: DaemonConfig) -> Iterator[Path]:
    path = daemon_cfg.paths.jobs_dir / "pipe.toml"
    os.mkfifo(path)
    yield path
    _release(path)


def test_fifo_job_file_is_an_invalid_job_not_a_hang(daemon_cfg: DaemonConfig,
                                                    fifo_job: Path) -> None:
    exc = _call_briefly(lambda: load_job(fifo_job, daemon_cfg), fifo_job)
    assert isinstance(exc, JobError), exc
    [problem] = exc.problems
    assert problem.startswith(f"{fifo_job}: not a regular file (a FIFO)")
    assert "replace it with a TOML file" in problem


def test_fifo_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "selvad.toml"
    os.mkfifo(path)
    try:
        exc = _call_briefly(lambda: load_config(path), path)
    finally:
        _release(path)
    assert isinstance(exc, ConfigError) and "not a regular file (a FIFO)" in str(exc), exc


def test_directory_and_device_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.toml").mkdir()
    for path, what in ((tmp_path / "dir.toml", "a directory"),
                       (Path("/dev/null"), "a character device")):
        with pytest.raises(ConfigError) as info:
            read_toml(path)
        assert info.value.problems == [f"{path}: not a regular file ({what}); replace it with "
                                       "a TOML file"]


def test_symlink_to_a_regular_file_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text('a = 1\n')
    (tmp_path / "link.toml").symlink_to(real)
    assert read_toml(tmp_path / "link.toml") == {"a": 1}


def test_huge_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    with open(path, "wb") as f:
        f.truncate(MAX_TOML_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(ConfigError) as info:
        read_toml(path)
    assert "too large" in str(info.value) and str(path) in str(info.value)
