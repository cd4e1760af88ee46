"""A heavy dataset is validated off the main loop: the loop answers requests and queues other
jobs meanwhile, and what waited for the report goes on once it is in (the Daemon driven by
hand; the validation thread is real, held at a gate by the test)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.datasets.report import load_last_report
from selvad.datasets.watch import DatasetEvent, JobEvent
from selvad.demo import make_dataset
from selvad.runs.queue import RunQueue
from selvad.runs.watched import WatchedTable
from selvad.service import events as events_module
from selvad.service import offloop
from selvad.service.daemon import Daemon
from selvad.service.offloop import ValidationDone


@pytest.fixture
def daemon(make_config: Callable[[str], Path]) -> Daemon:
    d = Daemon(make_config(""))
    d.queue = RunQueue(d.cfg.paths.queue_path)
    return d


@pytest.fixture
def gate(monkeypatch, tmp_path: Path):
    """Datasets over 2 MB are heavy (a demo clip is about 1.1 MB); validating `heavy` waits until the gate opens (and
    runs on a thread other than the main one, or the test fails)."""
    monkeypatch.setattr(offloop, "OFF_LOOP_BYTES", 2_000_000)
    opened, threads = threading.Event(), []
    real = events_module.validate_dataset

    def held(directory, *args, **kwargs):
        if Path(directory).name == "heavy":
            threads.append(threading.current_thread())
            assert opened.wait(30)
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(events_module, "validate_dataset", held)
    return opened, threads


def _job(tmp_path: Path, name: str, dataset: str, on_change: bool = True) -> Path:
    path = tmp_path / "jobs" / f"{name}.toml"
    path.write_text(f'dataset = "{dataset}"\nvariant = "tiny_16k"\n[train]\nsteps = 20\n'
                    f'[trigger]\non_change = {str(on_change).lower()}\nsettle_minutes = 0.0\n')
    return path


def _kinds(d: Daemon, job: str) -> list[str]:
    assert d.queue is not None
    return sorted(r.kind for r in d.queue.list_runs(job=job))


def _deliver(d: Daemon) -> None:
    """Wait for the thread's ValidationDone and hand the inbox to the main loop."""
    deadline = time.monotonic() + 30
    while not any(isinstance(item, ValidationDone) for item in d.inbox):
        assert time.monotonic() < deadline, "the background validation never reported"
        time.sleep(0.02)
    d._drain_inbox()


def test_a_heavy_dataset_does_not_hold_the_loop(daemon: Daemon, tmp_path: Path, gate, capsys):
    opened, threads = gate
    d = daemon
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "heavy", 6)  # about 6.6 MB: heavy here
    make_dataset(tmp_path / "datasets" / "light", 1)
    started = time.monotonic()
    d.events.handle(JobEvent(_job(tmp_path, "big", "heavy"), "created"))
    assert time.monotonic() - started < 5  # the loop was not held by the gate
    out = capsys.readouterr()
    assert _kinds(d, "big") == [] and "dataset.validating" in out.out + out.err
    # meanwhile: another job is loaded and queued, a request is answered
    d.events.handle(JobEvent(_job(tmp_path, "small", "light"), "created"))
    assert _kinds(d, "small") == ["train"]
    req = d.queue.request("enqueue", job="big")
    d.requests.handle_pending()
    answer = d.queue.get_request(req).result
    assert "is being validated" in answer and "queued as soon as it is valid" in answer
    assert threads and threads[0] is not threading.main_thread()
    opened.set()
    _deliver(d)
    assert _kinds(d, "big") == ["train"] and _kinds(d, "extract-heavy") == ["extract"]
    kept = load_last_report(d.cfg.paths.state_dir, os.path.abspath(tmp_path / "datasets" / "heavy"))
    assert kept is not None and kept["ok"] and kept["clip_count"] == 6
    assert not d.events._background.keys()


def test_a_heavy_dataset_with_errors_holds_its_runs_once_validated(daemon: Daemon, tmp_path: Path,
                                                                   gate):
    opened, _ = gate
    d = daemon
    assert d.queue is not None
    data = tmp_path / "datasets" / "heavy"
    make_dataset(data, 6)
    opened.set()
    d.events.handle(JobEvent(_job(tmp_path, "big", "heavy"), "created"))
    _deliver(d)
    (run,) = d.queue.list_runs(job="big")
    opened.clear()
    (data / "clip00.wav").write_bytes(b"not audio" * 30_000)  # still heavy, now invalid
    d.events.handle(DatasetEvent(tmp_path / "datasets", "heavy", "changed", ("clip00.wav",)))
    assert d.queue.get(run.id).error is None  # not held before the report says so
    assert not d.events.ready_to_start(d.queue.get(run.id))  # nor started while it is made
    opened.set()
    _deliver(d)
    assert d.queue.get(run.id).error is not None and d.queue.next_run() is None
    (problem,) = [p for p in WatchedTable(d.queue).problems() if p.kind == "dataset"]
    assert "clip00.wav" in problem.problem and "selvad validate" in problem.problem


def test_a_heavy_unused_dataset_is_reported_with_its_advice(daemon: Daemon, tmp_path: Path, gate):
    opened, _ = gate
    d = daemon
    data = tmp_path / "datasets" / "heavy"
    make_dataset(data, 6)
    d.events.handle(DatasetEvent(tmp_path / "datasets", "heavy", "changed", ("clip00.wav",)))
    assert load_last_report(d.cfg.paths.state_dir, os.path.abspath(data)) is None
    opened.set()
    _deliver(d)
    kept = load_last_report(d.cfg.paths.state_dir, os.path.abspath(data))
    assert kept is not None and kept["advice"][0].startswith("no job uses this dataset yet")


def test_a_validation_that_raises_is_a_problem_not_a_dead_loop(daemon: Daemon, tmp_path: Path,
                                                                monkeypatch, capsys):
    d = daemon
    assert d.queue is not None
    monkeypatch.setattr(offloop, "OFF_LOOP_BYTES", 0)

    def broken(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(events_module, "validate_dataset", broken)
    make_dataset(tmp_path / "datasets" / "heavy", 2)
    d.events.handle(JobEvent(_job(tmp_path, "big", "heavy"), "created"))
    _deliver(d)
    assert _kinds(d, "big") == []
    out = capsys.readouterr()
    assert "dataset.validation_failed" in out.out + out.err
    (problem,) = [p for p in WatchedTable(d.queue).problems() if p.kind == "dataset"]
    assert "could not be validated (MemoryError)" in problem.problem


def test_a_heavy_datasets_progress_shows_in_status_while_it_validates(daemon: Daemon, tmp_path: Path,
                                                                       monkeypatch):
    """The thread's progress reaches STATUS (systemctl status) through the main loop's text, and
    goes when the report is in."""
    monkeypatch.setattr(offloop, "OFF_LOOP_BYTES", 2_000_000)
    reached, opened = threading.Event(), threading.Event()
    real = events_module.validate_dataset

    def held(directory, *args, **kwargs):
        kwargs["progress"](2, 6)
        reached.set()
        assert opened.wait(30)
        return real(directory, *args, **kwargs)

    monkeypatch.setattr(events_module, "validate_dataset", held)
    d = daemon
    make_dataset(tmp_path / "datasets" / "heavy", 6)
    d.events.handle(JobEvent(_job(tmp_path, "big", "heavy"), "created"))
    assert reached.wait(30)
    assert d._status_text().endswith("; validating heavy: 2/6 clips"), d._status_text()
    opened.set()
    _deliver(d)
    assert "validating" not in d._status_text()
