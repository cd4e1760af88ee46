"""Training windows: when *new* training runs may start.

A window never interrupts a running run. Windows are strings of the form ``[DAYS ]HH:MM-HH:MM``:

- ``"22:00-07:00"``       every night; a window whose end is not after its start crosses
                          midnight and belongs to the day it starts on
- ``"mon-fri 19:00-23:30"`` weekdays only; days are ``mon tue wed thu fri sat sun``,
                          as a list (``sat,sun``), a range (``mon-fri``) or both
- ``"sat,sun 00:00-24:00"`` whole days (``24:00`` is allowed as an end)
- ``"22-7"``              hours only, same as ``22:00-07:00``

An empty list of windows means "always open". The daemon config checks windows with
`parse_window`; the main loop asks `window_open`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["DAYS", "TrainingWindow", "WindowError", "next_opening", "parse_window", "window_open"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index = datetime.weekday()

_TIME = r"(\d{1,2})(?::(\d{2}))?"

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

