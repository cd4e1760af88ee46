"""Job events with the documented trigger semantics and files that are not job files
(the Daemon driven by hand, no threads or children)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.datasets.watch import DatasetEvent, JobEvent
from selvad.demo import make_dataset
from selvad.runs.queue import RunQueue
from selvad.service.daemon import Daemon


@pytest.fixture
def daemon(make_config: Callable[[str], Path]) -> Daemon:
    d = Daemon(make_config(""))
    d.queue = RunQueue(d.cfg.paths.queue_path)
    return d


def _job(tmp_path: Path, name: str, on_change: bool, steps: int = 20) -> Path:
    path = tmp_path / "jobs" / f"{name}.toml"
    path.write_text(f'dataset = "birds"\nvariant = "tiny_16k"\n[train]\nsteps = {steps}\n'
                    f'[trigger]\non_change = {str(on_change).lower()}\nsettle_minutes = 0.0\n')
    return path


def _kinds(d: Daemon, job: str) -> list[str]:
    assert d.queue is not None
    return sorted(r.kind for r in d.queue.list_runs(job=job))


def test_on_change_false_trains_only_on_enqueue(daemon: Daemon, tmp_path: Path) -> None:
    """`on_change = false`: creating or editing the job file and changing the dataset queue
    the extraction (the cache is filled ahead) but never training; `selvad enqueue` does."""
    d = daemon
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _job(tmp_path, "manual", on_change=False)
    d.events.handle(JobEvent(path, "created"))
    assert _kinds(d, "manual") == [] and _kinds(d, "extract-birds") == ["extract"]
    _job(tmp_path, "manual", on_change=False, steps=30)
    d.events.handle(JobEvent(path, "modified"))
    d.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "changed", ("clip00.wav",)))
    d.events.due_training()
    assert _kinds(d, "manual") == [] and "manual" not in d.events.train_due
    req = d.queue.request("enqueue", job="manual")
    d.requests.handle_pending()
    assert d.queue.get_request(req).result.startswith("queued ")
    assert _kinds(d, "manual") == ["train"]


def test_on_change_false_job_loaded_while_the_dataset_settles(daemon: Daemon,
                                                              tmp_path: Path) -> None:
    """A job file created mid-copy waits for the dataset; with on_change = false the settled
    dataset still queues no training for it."""
    d = daemon
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _job(tmp_path, "manual", on_change=False)
    d.events.waiting.add("manual")  # as if its dataset was still settling when it loaded
    d.jobs["manual"] = d.events.load(path)
    d.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "changed", ("clip00.wav",)))
    assert _kinds(d, "manual") == [] and "manual" not in d.events.waiting


def test_on_change_true_still_trains_on_create(daemon: Daemon, tmp_path: Path) -> None:
    make_dataset(tmp_path / "datasets" / "birds", 3)
    daemon.events.handle(JobEvent(_job(tmp_path, "auto", on_change=True), "created"))
    assert _kinds(daemon, "auto") == ["train"]


def test_fifo_job_file_is_logged_invalid_and_others_go_on(daemon: Daemon, tmp_path: Path,
                                                          capsys) -> None:
    make_dataset(tmp_path / "datasets" / "birds", 3)
    fifo = tmp_path / "jobs" / "pipe.toml"
    os.mkfifo(fifo)
    daemon.events.handle(JobEvent(fifo, "created"))  # would block forever on a read
    daemon.events.handle(JobEvent(_job(tmp_path, "good", on_change=True), "created"))
    assert "pipe" not in daemon.jobs and _kinds(daemon, "good") == ["train"]
    out = capsys.readouterr()
    assert "job.invalid" in out.out + out.err and "not a regular file (a FIFO)" in out.out + out.err
