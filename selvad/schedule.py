"""Training windows and periodic maintenance jobs (apscheduler 3.x).

A training window says when *new* runs may start (a running one is never interrupted by a
window closing). Windows are strings of the form ``[DAYS ]HH:MM-HH:MM``:

- ``"22:00-07:00"``       every night; a window whose end is not after its start crosses
                          midnight and belongs to the day it starts on
- ``"mon-fri 19:00-23:30"`` weekdays only; days are ``mon tue wed thu fri sat sun``,
                          as a list (``sat,sun``), a range (``mon-fri``) or both
- ``"sat,sun 00:00-24:00"`` whole days (``24:00`` is allowed as an end)
- ``"22-7"``              hours only, same as ``22:00-07:00``

An empty list of windows means "always open". apscheduler is imported only when a
scheduler is built, so importing this module stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from apscheduler.schedulers.background import BackgroundScheduler

__all__ = [
    "DAYS",
    "TrainingWindow",
    "WindowError",
    "build_scheduler",
    "checkpoints_to_prune",
    "parse_window",
    "prune_run_dir",
    "reschedule",
    "window_open",
]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()
_TIME = r"(\d{1,2})(?::(\d{2}))?"
_STEP_CKPT_RE = re.compile(r"^adapter_step(\d+)\.pt$")
_WINDOW_RE = re.compile(rf"^\s*(?:(?P<days>[a-z,\-]+)\s+)?{_TIME}\s*-\s*{_TIME}\s*$")


class WindowError(ValueError):
    """A training window string could not be parsed; the message says what is wrong."""


@dataclass(frozen=True)
class TrainingWindow:
    """One parsed window: start/end in minutes after midnight, the weekdays it starts on."""

    start: int  # minutes after midnight, 0..1439
    end: int  # minutes after midnight, 1..1440; <= start means it ends the next day
    days: frozenset[int]  # datetime.weekday() values the window may start on

    def contains(self, when: datetime) -> bool:
        """True when `when` (a wall-clock datetime) lies inside this window."""
        minute = when.hour * 60 + when.minute
        today = when.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        # Crosses midnight: the evening part belongs to today, the morning part to yesterday.
        if today in self.days and minute >= self.start:
            return True
        return (today - 1) % 7 in self.days and minute < self.end


def _parse_days(text: str, original: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        ends = part.split("-")
        if len(ends) > 2 or not all(e in DAYS for e in ends):
            raise WindowError(f"bad day list {text!r} in {original!r}; days are {', '.join(DAYS)}")
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        i = first
        while True:  # ranges may wrap: "fri-mon"
            days.add(i)
            if i == last:
                break
            i = (i + 1) % 7
    return frozenset(days)


def parse_window(text: str) -> TrainingWindow:
    """Parse one window string (see the module docstring) into a TrainingWindow.

    Raises WindowError with a message naming the bad part; a window with equal start and
    end (``"22:00-22:00"``) is refused because it is ambiguous (empty or all day).
    """
    if not isinstance(text, str):
        raise WindowError(f"expected a string like '22:00-07:00', got {text!r}")
    m = _WINDOW_RE.match(text.lower())
    if not m:
        raise WindowError(f"cannot parse {text!r}; expected '[DAYS ]HH:MM-HH:MM'")
    h1, m1, h2, m2 = m.group(2), m.group(3), m.group(4), m.group(5)
    start = int(h1) * 60 + int(m1 or 0)
    end = int(h2) * 60 + int(m2 or 0)
    if int(h1) > 23 or int(m1 or 0) > 59 or int(h2) > 24 or int(m2 or 0) > 59 or end > 1440:
        raise WindowError(f"time out of range in {text!r}")
    if start == end % 1440 and end != 1440:
        raise WindowError(f"window {text!r} has the same start and end")
    days = _parse_days(m.group("days"), text) if m.group("days") else frozenset(range(7))
    return TrainingWindow(start=start, end=end, days=days)


def window_open(windows: Sequence[str | TrainingWindow], when: datetime) -> bool:
    """True when new runs may start at `when`: no windows at all, or `when` is inside one.

    `windows` may hold strings (parsed here; invalid ones raise WindowError) or parsed
    TrainingWindow records. `when` is compared in its own wall-clock time.
    """
    if not windows:
        return True
    parsed = [w if isinstance(w, TrainingWindow) else parse_window(w) for w in windows]
    return any(w.contains(when) for w in parsed)


def next_opening(windows: Sequence[str | TrainingWindow], when: datetime) -> datetime | None:
    """The first minute at or after `when` at which a window is open (None if never).

    Scans minute by minute over one week, which is cheap (10080 checks) and obviously right.
    """
    parsed = [w if isinstance(w, TrainingWindow) else parse_window(w) for w in windows]
    if not parsed:
        return when
    t = when.replace(second=0, microsecond=0)
    for _ in range(7 * 24 * 60 + 1):
        if any(w.contains(t) for w in parsed):
            return max(t, when)
        t += timedelta(minutes=1)
    return None


def build_scheduler(
    *,
    rescan_minutes: float,
    retention_minutes: float,
    rescan: Callable[[], Any],
    retention: Callable[[], Any],
    start: bool = True,
) -> BackgroundScheduler:
    """Create a BackgroundScheduler with the periodic "rescan" and "retention" jobs.

    Both jobs coalesce missed runs into one, never overlap themselves (max_instances=1) and
    tolerate a late start of a whole interval. A non-positive interval leaves that job out.
    The scheduler is started unless `start` is False; stop it with `.shutdown(wait=False)`.
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = BackgroundScheduler(daemon=True)
    reschedule(
        sched,
        rescan_minutes=rescan_minutes,
        retention_minutes=retention_minutes,
        rescan=rescan,
        retention=retention,
    )
    if start:
        sched.start()
    return sched


def reschedule(
    sched: BackgroundScheduler,
    *,
    rescan_minutes: float,
    retention_minutes: float,
    rescan: Callable[[], Any],
    retention: Callable[[], Any],
) -> None:
    """(Re)install the periodic jobs on `sched` with new intervals (used on config reload)."""
    for job_id, minutes, func in (
        ("rescan", rescan_minutes, rescan),
        ("retention", retention_minutes, retention),
    ):
        if sched.get_job(job_id) is not None:
            sched.remove_job(job_id)
        if minutes > 0:
            seconds = minutes * 60.0
            sched.add_job(
                func,
                "interval",
                seconds=seconds,
                id=job_id,
                name=job_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(seconds)),
            )


def checkpoints_to_prune(names: Sequence[str], keep_last: int, finished: bool = True) -> list[str]:
    """Which step checkpoints (`adapter_stepNNNNN.pt`) of one run directory to delete.

    The newest `keep_last` are kept; `adapter_final.pt`, `adapter_best.pt` and every other
    file never match. An unfinished run always keeps its newest checkpoint (its resume
    point), whatever `keep_last` says. Returns names, oldest first.
    """
    steps = sorted((int(m.group(1)), n) for n in names if (m := _STEP_CKPT_RE.match(n)))
    keep = max(keep_last, 0 if finished else 1)
    doomed = steps[: max(len(steps) - keep, 0)]
    return [n for _, n in doomed]


def prune_run_dir(run_dir: Path | str, keep_last: int, finished: bool = True) -> list[Path]:
    """Delete the step checkpoints `checkpoints_to_prune` picks in `run_dir`; returns them."""
    run_dir = Path(run_dir)
    names = [p.name for p in run_dir.iterdir() if p.is_file()] if run_dir.is_dir() else []
    removed = []
    for name in checkpoints_to_prune(names, keep_last, finished):
        (run_dir / name).unlink(missing_ok=True)
        removed.append(run_dir / name)
    return removed
