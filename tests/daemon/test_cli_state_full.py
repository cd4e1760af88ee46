"""`selvad enqueue|cancel|retry|status` on a state directory whose disk is full: one sentence
naming the state directory and the fix, exit 1, never a sqlite traceback.

The state directory is a real tiny tmpfs filled to the last byte (mounting needs root or
CAP_SYS_ADMIN; the tests are skipped, saying so, where mounting is not permitted).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from selvad.runs.queue import RunQueue

REPO = Path(__file__).resolve().parents[2]


def _fill(directory: Path) -> None:
    """Write a filler file in `directory` until its filesystem has not one byte left."""
    fd = os.open(directory / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                continue
    finally:
        os.close(fd)


@pytest.fixture
def full_state(tmp_path: Path) -> Iterator[tuple[Path, Path, str]]:
    """(config, state dir, id of a failed run) with the state dir on a 512 KiB tmpfs (the
    test fills it)."""
    state = tmp_path / "state"
    state.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(state)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip("cannot mount a small tmpfs to fill up (needs root or CAP_SYS_ADMIN): "
                    + (res.stderr.strip() or f"mount exited {res.returncode}"))
    try:
        for d in ("datasets", "jobs", "out"):
            (tmp_path / d).mkdir()
        (tmp_path / "jobs" / "birds.toml").write_text('dataset = "birds"\n')
        config = tmp_path / "selvad.toml"
        config.write_text('[paths]\ndataset_roots = ["datasets"]\njobs_dir = "jobs"\n'
                          'output_root = "out"\nstate_dir = "state"\n')
        q = RunQueue(state / "queue.sqlite3")
        run = q.enqueue("birds", "birds", {"steps": 20}, {"files": []})
        q.claim(run.id)
        q.set_state(run.id, "failed", error="boom")
        q.close()
        yield config, state, run.id
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "selvad.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


def _assert_one_sentence(res: subprocess.CompletedProcess[str], state: Path) -> None:
    assert res.returncode == 1, res
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("selvad: ") and f"free space in {state}" in res.stderr


def test_requests_and_status_on_a_full_state_dir(full_state: tuple[Path, Path, str]) -> None:
    """No daemon holds the database open: even opening it needs space (its -shm file)."""
    config, state, run_id = full_state
    _fill(state)
    for args in (("enqueue", "birds", "--wait", "0"), ("cancel", run_id, "--wait", "0"),
                 ("retry", run_id, "--wait", "0"), ("status",)):
        _assert_one_sentence(_cli(config, *args), state)


def test_requests_while_the_daemon_holds_the_database(full_state: tuple[Path, Path, str]) -> None:
    """The daemon has it open (its -wal/-shm files exist): reading works, writing a request
    fails with sqlite's "database or disk is full"."""
    config, state, run_id = full_state
    holder = RunQueue(state / "queue.sqlite3")  # as the running daemon does
    try:
        _fill(state)
        for args in (("enqueue", "birds", "--wait", "0"), ("retry", run_id, "--wait", "0")):
            _assert_one_sentence(_cli(config, *args), state)
        assert _cli(config, "status").returncode == 0
    finally:
        holder.close()


def test_read_only_state_dir(full_state: tuple[Path, Path, str]) -> None:
    config, state, run_id = full_state
    subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
    res = _cli(config, "enqueue", "birds", "--wait", "0")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res
    assert res.stderr.count("\n") == 1 and f"{state} is on a read-only filesystem" in res.stderr, res.stderr
