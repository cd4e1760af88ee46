"""A killed run's retry delay runs on the monotonic clock: a wall clock stepped back an hour
does not hold it for an hour (clocks injected), and a stopped child gets SIGCONT with its
SIGTERM so it checkpoints instead of waiting for SIGKILL."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from selvad.runs.child import signal_group
from selvad.runs.queue import RunQueue
from selvad.runs.retrywait import RetryWaits


class Clock:
    def __init__(self, wall: float) -> None:
        self.w, self.m = wall, 1000.0

    def wall(self) -> float:
        return self.w

    def mono(self) -> float:
        return self.m


def _killed_run(tmp_path: Path, clock: Clock) -> tuple[RunQueue, str]:
    q = RunQueue(tmp_path / "queue.sqlite3")
    run = q.enqueue("j", "d", {}, {})
    assert run is not None
    for state in ("extracting", "training"):
        q.set_state(run.id, state)
    q.set_state(run.id, "queued", error="killed", retry_at=clock.wall() + 30)  # 1st retry
    return q, run.id


def test_a_wall_clock_stepped_back_an_hour_does_not_hold_the_retry(tmp_path: Path) -> None:
    clock = Clock(wall=time.time())
    q, run_id = _killed_run(tmp_path, clock)
    waits = RetryWaits(wall=clock.wall, mono=clock.mono)
    assert waits.due(q.retry_waiting()) == []  # first seen: 30 s to go
    clock.w -= 3600  # NTP (or an operator) steps the clock back one hour
    clock.m += 29
    assert waits.due(q.retry_waiting()) == []
    assert q.next_run(now=clock.wall()) is None  # by the wall clock it would wait an hour
    clock.m += 1.5
    assert waits.due(q.retry_waiting()) == [run_id]
    assert q.release_retry(run_id)
    assert (nxt := q.next_run(now=clock.wall())) is not None and nxt.id == run_id
    assert waits.due(q.retry_waiting()) == []  # forgotten once released


def test_a_wait_first_seen_after_a_step_back_is_capped_at_the_longest_delay(
        tmp_path: Path) -> None:
    clock = Clock(wall=time.time())
    q, run_id = _killed_run(tmp_path, clock)
    clock.w -= 3600  # stepped back before the daemon (restarted) saw the run
    waits = RetryWaits(max_delay=120, wall=clock.wall, mono=clock.mono)
    assert waits.due(q.retry_waiting()) == []
    clock.m += 119
    assert waits.due(q.retry_waiting()) == []
    clock.m += 1
    assert waits.due(q.retry_waiting()) == [run_id]


CHILD = """
import signal, sys, time
def on_term(*_):
    open(sys.argv[1], "w").write("checkpointed")
    sys.exit(3)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1] + ".ready", "w").close()
while True:
    time.sleep(0.05)
"""


def test_sigterm_to_a_stopped_child_continues_it_so_it_checkpoints(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker)], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "marker.ready").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        signal_group(proc.pid, signal.SIGTERM)
        assert proc.wait(10) == 3
        assert marker.read_text() == "checkpointed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
