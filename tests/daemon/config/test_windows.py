"""Training windows (pure): parsing, open/closed at a time, the next opening."""

from __future__ import annotations

from datetime import datetime

import pytest

from selvad.config.windows import WindowError, next_opening, parse_window, window_open

MON = datetime(2026, 11, 23)  # a Monday


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return MON.replace(day=MON.day + day, hour=hh, minute=mm)


def test_no_windows_is_always_open() -> None:
    assert window_open([], at(0, 12))


def test_same_day_window() -> None:
    w = ["09:30-17:00"]
    assert not window_open(w, at(0, 9, 29))
    assert window_open(w, at(0, 9, 30))
    assert window_open(w, at(0, 16, 59))
    assert not window_open(w, at(0, 17, 0))


def test_overnight_window_belongs_to_start_day() -> None:
    w = ["fri 22:00-07:00"]
    assert window_open(w, at(4, 23))  # Friday night
    assert window_open(w, at(5, 6, 59))  # Saturday morning, still Friday's window
    assert not window_open(w, at(5, 7))
    assert not window_open(w, at(4, 6))  # Friday morning belongs to Thursday
    assert not window_open(w, at(5, 23))


def test_day_lists_ranges_hour_shorthand_and_full_days() -> None:
    assert parse_window("22-7") == parse_window("22:00-07:00")
    w = parse_window("sat,sun 00:00-24:00")
    assert w.days == frozenset({5, 6})
    assert window_open([w], at(5, 0)) and window_open([w], at(6, 23, 59))
    assert not window_open([w], at(0, 12))
    assert parse_window("fri-mon 10-11").days == frozenset({4, 5, 6, 0})
    assert window_open(["mon-fri 19:00-23:30", "sat 10:00-12:00"], at(5, 11))


@pytest.mark.parametrize("bad", ["", "22:00", "25:00-07:00", "xyz 1-2", "10:00-10:00",
                                 "10:61-11:00", "10:00-24:30"])
def test_bad_windows(bad: str) -> None:
    with pytest.raises(WindowError):
        parse_window(bad)


def test_next_opening() -> None:
    assert next_opening(["22:00-07:00"], at(0, 12, 30)) == at(0, 22)
    assert next_opening(["22:00-07:00"], at(0, 23, 15)) == at(0, 23, 15)
    assert next_opening([], at(0, 1)) == at(0, 1)

