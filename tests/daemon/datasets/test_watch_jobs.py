"""Job files that are not regular files (a FIFO named `*.toml`) still reach the daemon as
job events, at start-up too, so that it reports them as invalid jobs; the watcher itself
never opens them."""

from __future__ import annotations

import os
from pathlib import Path

from selvad.datasets.watch import JobEvent, Watcher


def test_fifo_job_file_is_reported_by_the_first_scan(tmp_path: Path) -> None:
    (tmp_path / "datasets").mkdir()
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    os.mkfifo(jobs / "pipe.toml")
    (jobs / "good.toml").write_text('dataset = "birds"\n')
    events: list[object] = []
    w = Watcher([tmp_path / "datasets"], jobs, on_dataset=events.append,
                on_job=events.append, settle_seconds=0.0)
    w.full_scan()
    w.tick(0.0)
    assert sorted((e.name, e.change) for e in events if isinstance(e, JobEvent)) == [
        ("good", "created"), ("pipe", "created")]
    w.full_scan()  # a rescan reports nothing new
    assert w.tick(1.0) == []
