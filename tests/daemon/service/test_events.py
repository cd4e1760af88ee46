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


def _settled_job(tmp_path: Path, name: str, body: str = "", settle: float = 5.0,
                 dataset: str = "birds") -> Path:
    path = tmp_path / "jobs" / f"{name}.toml"
    path.write_text(f'dataset = "{dataset}"\nvariant = "tiny_16k"\n{body}\n'
                    f'[trigger]\nsettle_minutes = {settle}\n')
    return path


def _expire(d: Daemon) -> None:
    for name in d.events.train_due:
        d.events.train_due[name] = 0.0
    d.events.due_training()


def test_edits_within_the_settle_time_queue_one_run_with_the_last_config(
        daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _settled_job(tmp_path, "edit", "[train]\nsteps = 20")
    d.events.handle(JobEvent(path, "created"))
    assert _kinds(d, "edit") == [] and "edit" in d.events.train_due  # waits for its settle time
    _settled_job(tmp_path, "edit", "[train]\nsteps = 40")
    d.events.handle(JobEvent(path, "modified"))
    _expire(d)
    runs = d.queue.list_runs(job="edit")
    assert [(r.state, r.config["steps"]) for r in runs] == [("queued", 40)]


def test_a_sweep_supersedes_the_queued_plain_run(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _settled_job(tmp_path, "sw", settle=0.0)
    d.events.handle(JobEvent(path, "created"))
    (plain,) = d.queue.list_runs(job="sw")
    _settled_job(tmp_path, "sw", '[[sweep]]\nid = "r8"\nlora.rank = 8\n'
                                 '[[sweep]]\nid = "r16"\nlora.rank = 16', settle=0.0)
    d.events.handle(JobEvent(path, "modified"))
    runs = {r.sweep_id: r for r in d.queue.list_runs(job="sw")}
    assert runs[""].state == "cancelled" and runs[""].error == f"superseded by {runs['r8'].id}"
    assert runs["r8"].state == runs["r16"].state == "queued" and runs[""].id == plain.id
    # editing back to the plain job queues it again (a superseded run is no duplicate)
    _settled_job(tmp_path, "sw", settle=0.0)
    d.events.handle(JobEvent(path, "modified"))
    states = sorted((r.sweep_id, r.state) for r in d.queue.list_runs(job="sw"))
    assert states == [("", "cancelled"), ("", "queued"), ("r16", "cancelled"),
                      ("r8", "cancelled")]


def test_a_started_run_is_never_superseded(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _settled_job(tmp_path, "keep", "[train]\nsteps = 20", settle=0.0)
    d.events.handle(JobEvent(path, "created"))
    (run,) = d.queue.list_runs(job="keep")
    d.queue.claim(run.id)
    d.queue.set_state(run.id, "queued")  # interrupted: it resumes from its checkpoint
    _settled_job(tmp_path, "keep", "[train]\nsteps = 30", settle=0.0)
    d.events.handle(JobEvent(path, "modified"))
    assert [r.state for r in d.queue.list_runs(job="keep")] == ["queued", "queued"]


def test_queued_runs_wait_while_their_dataset_has_errors(daemon: Daemon, tmp_path: Path) -> None:
    from selvad.runs.queue import WAITING
    from selvad.runs.watched import WatchedTable

    d = daemon
    assert d.queue is not None
    data = tmp_path / "datasets" / "birds"
    make_dataset(data, 3)
    d.events.handle(JobEvent(_settled_job(tmp_path, "w", settle=0.0), "created"))
    (run,) = d.queue.list_runs(job="w")
    (data / "clip00.wav").write_bytes(b"not audio")  # the dataset becomes invalid
    d.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "changed", ("clip00.wav",)))
    assert d.queue.get(run.id).error == WAITING and d.queue.get(run.id).state == "queued"
    assert d.queue.next_run() is None  # neither the training nor the extraction starts
    (problem,) = [p for p in WatchedTable(d.queue).problems() if p.kind == "dataset"]
    assert "selvad validate" in problem.problem and problem.path == str(data)
    make_dataset(data, 3)  # fixed: the run is released
    d.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "changed", ("clip00.wav",)))
    assert d.queue.get(run.id).error is None
    assert WatchedTable(d.queue).problems() == []


def test_invalid_job_files_are_recorded_until_fixed(daemon: Daemon, tmp_path: Path) -> None:
    from selvad.runs.watched import WatchedTable

    d = daemon
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _settled_job(tmp_path, "broken", "[train]\nsteps = -3", settle=0.0)
    d.events.handle(JobEvent(path, "created"))
    (p,) = WatchedTable(d.queue).problems()
    assert (p.kind, p.name, p.path) == ("job", "broken", str(path)) and "steps" in p.problem
    _settled_job(tmp_path, "broken", "[train]\nsteps = 20", settle=0.0)
    d.events.handle(JobEvent(path, "modified"))
    assert WatchedTable(d.queue).problems() == []


def test_a_restart_with_nothing_changed_reports_no_change(
        make_config: Callable[[str], Path], tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    config = make_config("")
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _settled_job(tmp_path, "same", settle=0.0)
    lives = []
    for _ in range(2):  # two daemon lifetimes; the watcher's first scan reports all again
        d = Daemon(config)
        d.queue = RunQueue(d.cfg.paths.queue_path)
        with capture_logs() as logs:
            d.events.handle(JobEvent(path, "created"))
            d.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "changed",
                                         ("clip00.wav",)))
        lives.append([(e["event"], e.get("change"), e.get("state")) for e in logs])
    assert ("job.loaded", "created", None) in lives[0] and ("dataset.changed", None,
                                                             None) in lives[0]
    assert ("job.loaded", "unchanged", None) in lives[1]
    for event, change, state in lives[1]:
        assert change != "created" and state != "queued"
        assert event not in ("dataset.changed", "job.training_due")
    assert d.events.train_due == {}


def test_a_run_starts_on_the_files_as_they_are_now(daemon: Daemon, tmp_path: Path) -> None:
    """Clips added after queueing (their event still settling toward the job's settle time):
    the run that starts trains on them, and its manifest (run.toml) says so."""
    d = daemon
    assert d.queue is not None
    data = tmp_path / "datasets" / "birds"
    make_dataset(data, 3)
    d.events.handle(JobEvent(_settled_job(tmp_path, "now", settle=0.0), "created"))
    (run,) = d.queue.list_runs(job="now")
    make_dataset(data, 4)  # one more clip, not reported yet
    assert d.events.ready_to_start(run)
    fresh = d.queue.get(run.id)
    assert len(fresh.manifest["files"]) == len(run.manifest["files"]) + 2  # .wav and .npz
    (data / "clip00.wav").write_bytes(b"not audio")
    assert not d.events.ready_to_start(fresh)  # errors: it waits instead
    assert d.queue.get(run.id).error is not None and d.queue.next_run() is None


def test_a_touch_keeps_the_running_settle_time(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _settled_job(tmp_path, "touch")
    d.events.handle(JobEvent(path, "created"))
    due = d.events.train_due["touch"]
    os.utime(path)  # the watcher reports it, the content is the same
    d.events.handle(JobEvent(path, "modified"))
    assert d.events.train_due["touch"] == due and _kinds(d, "touch") == []


def test_a_datasets_last_report_is_kept_for_the_page_and_forgotten_with_it(
        daemon: Daemon, tmp_path: Path) -> None:
    """The web page lists each dataset's errors and warnings from the report the daemon
    keeps in state_dir/datasets/; a removed dataset takes its report along."""
    from selvad.datasets.report import load_last_report

    birds = tmp_path / "datasets" / "birds"
    make_dataset(birds, 3)
    (birds / "room_tone.wav").write_bytes((birds / "clip00.wav").read_bytes())  # no .npz
    daemon.events.handle(JobEvent(_job(tmp_path, "manual", on_change=False), "created"))
    kept = load_last_report(daemon.cfg.paths.state_dir, os.path.abspath(birds))
    assert kept is not None and kept["ok"] and kept["clip_count"] == 3
    assert [w["file"] for w in kept["warnings"]] == ["room_tone.wav"]
    daemon.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "removed"))
    assert load_last_report(daemon.cfg.paths.state_dir, os.path.abspath(birds)) is None
