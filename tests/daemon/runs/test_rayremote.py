"""The node side of the Ray executor without Ray: the shared-storage check's reading."""

from __future__ import annotations

from pathlib import Path

from selvad.runs.rayremote import read_markers


def test_a_node_that_sees_the_markers_reports_nothing(tmp_path: Path) -> None:
    (tmp_path / "m").write_text("token\n")
    assert read_markers({str(tmp_path / "m"): "token"}) == []


def test_a_missing_or_different_marker_is_named(tmp_path: Path) -> None:
    (tmp_path / "other").write_text("someone else's\n")
    problems = read_markers({str(tmp_path / "absent"): "t1", str(tmp_path / "other"): "t2"})
    assert problems[0].startswith(f"{tmp_path / 'absent'}: No such file")
    assert problems[1].startswith(f"{tmp_path / 'other'}: another file than the daemon's")
