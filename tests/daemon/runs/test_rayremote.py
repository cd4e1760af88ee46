"""The node side of the Ray executor without Ray: the shared-storage check's reading."""

from __future__ import annotations

import time
from pathlib import Path

from selvad.runs.rayremote import RunActor, read_markers


def test_a_node_that_sees_the_markers_reports_nothing(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("token\n")
    assert read_markers({str(tmp_path / "m"): "token"}) == []


def test_a_missing_or_different_marker_is_named(tmp_path: Path) -> None:
    (tmp_path / "other").write_text("someone else's\n")
    problems = read_markers({str(tmp_path / "absent"): "t1", str(tmp_path / "other"): "t2"})
    assert problems[0].startswith(f"{tmp_path / 'absent'}: No such file")
    assert problems[1].startswith(f"{tmp_path / 'other'}: another file than the daemon's")


def test_the_actor_class_runs_the_child_and_hands_over_its_lines() -> None:
    """RunActor as a plain object (Ray only places it): a real child, its lines, its exit."""
    actor = RunActor()
    where = actor.start(["extract", "--help"], {"PYTHONUNBUFFERED": "1"}, None)
    assert where["pid"] > 0 and where["host"]
    items: list = []
    deadline = time.monotonic() + 60
    while not items or items[-1][0] != "exit":
        assert time.monotonic() < deadline, items[-3:]
        items += actor.take(1.0)
    assert items[-1] == ("exit", 0)
    assert any(kind == "out" and "--data_dir" in line for kind, line in items[:-1])
    assert actor.signal(15) is False  # the child is gone
