"""The state directory lock: one holder at a time, named by pid, gone with its process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from selvad.runs.statelock import LOCK_NAME, StateDirLocked, StateLock

HOLDER = ("import sys, time; from pathlib import Path; from selvad.runs.statelock import "
          "StateLock; StateLock.acquire(Path(sys.argv[1])); print('held', flush=True); "
          "time.sleep(60)")


def test_a_second_holder_is_refused_with_the_pid_then_admitted_after_release(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    lock = StateLock.acquire(state)
    assert (state / LOCK_NAME).read_text().strip() == str(os.getpid())
    with pytest.raises(StateDirLocked) as err:
        StateLock.acquire(state)
    assert err.value.pid == os.getpid()
    assert f"pid {err.value.pid}" in str(err.value) and str(state) in str(err.value)
    lock.release()
    StateLock.acquire(state).release()


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(StateDirLocked) as err:
            StateLock.acquire(tmp_path)
        assert err.value.pid == holder.pid
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    deadline = time.monotonic() + 5
    while True:
        try:
            StateLock.acquire(tmp_path).release()
            break
        except StateDirLocked:
            assert time.monotonic() < deadline, "the lock outlived its holder"
            time.sleep(0.05)


def test_daemon_running_sees_the_lock_without_taking_it(tmp_path: Path) -> None:
    from selvad.runs.statelock import daemon_running

    state = tmp_path / "state"
    assert daemon_running(state) is False  # never started here
    lock = StateLock.acquire(state)
    try:
        assert daemon_running(state) is True
        assert daemon_running(state, locks=tmp_path / "missing") is None
    finally:
        lock.release()
    assert daemon_running(state) is False  # the file stays, the lock is gone
    StateLock.acquire(state).release()  # the probe never held it
