"""Automatic-retry waits timed on the monotonic clock.

A killed run is queued again with `not_before` (unix seconds, stored so that a restarted
daemon still waits). The queue compares it with the wall clock, which NTP or an operator may
step: one hour back would hold the run for an hour. So the daemon times each wait it sees on
the monotonic clock instead: the wait left when it first sees the run (never more than the
longest retry delay) runs down on `time.monotonic`, and when it is over the daemon clears
`not_before` (RunQueue.release_retry), whatever the wall clock says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from selvad.runs.exits import KILL_RETRY_DELAYS
from selvad.runs.records import Run

__all__ = ["RetryWaits"]


class RetryWaits:
    """Monotonic deadlines of the queued runs that wait for an automatic retry.

    `wall` and `mono` are the clocks (injected by tests); `max_delay` (seconds) caps the wait
    a `not_before` far in the future can ask for (a wall clock stepped back before the
    daemon saw the run)."""

    def __init__(self, max_delay: float = max(KILL_RETRY_DELAYS),
                 wall: Callable[[], float] = time.time,
                 mono: Callable[[], float] = time.monotonic) -> None:
        self.max_delay = max_delay
        self.wall, self.mono = wall, mono
        self._deadlines: dict[tuple[str, float], float] = {}  # (run id, not_before) -> mono

    def due(self, waiting: Iterable[Run]) -> list[str]:
        """The ids among `waiting` (queued runs with a `not_before`) whose wait is over by
        the monotonic clock; forgets the runs no longer waiting."""
        now_wall, now_mono = self.wall(), self.mono()
        seen: dict[tuple[str, float], float] = {}
        over = []
        for run in waiting:
            if run.not_before is None:
                continue
            key = (run.id, run.not_before)
            deadline = self._deadlines.get(key)
            if deadline is None:
                deadline = now_mono + min(max(run.not_before - now_wall, 0.0), self.max_delay)
            seen[key] = deadline
            if now_mono >= deadline:
                over.append(run.id)
        self._deadlines = seen
        return over
