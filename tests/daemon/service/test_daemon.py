"""The daemon's decisions without threads or children: job and dataset events, debounce,
CLI requests, training windows, start-up requeueing and retention (Daemon driven by hand)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from selvad.datasets.watch import DatasetEvent, JobEvent
from selvad.demo import make_dataset
from selvad.runs.queue import RunQueue
from selvad.service.daemon import Daemon


@pytest.fixture
def daemon(make_config: Callable[[str], Path], tmp_path: Path) -> Callable[..., Daemon]:
    def make(extra: str = "") -> Daemon:
        d = Daemon(make_config(extra))
        d.queue = RunQueue(d.cfg.paths.queue_path)
        return d

    return make


def _job(tmp_path: Path, name: str, dataset: str, on_change: bool = True,
         settle_minutes: float = 0.0, steps: int = 20) -> Path:
    path = tmp_path / "jobs" / f"{name}.toml"
    path.write_text(f'dataset = "{dataset}"\nvariant = "tiny_16k"\n[train]\nsteps = {steps}\n'
                    f'[trigger]\non_change = {str(on_change).lower()}\n'
                    f'settle_minutes = {settle_minutes}\n')
    return path


def _kinds(d: Daemon, job: str, dataset: str | None = None) -> list[tuple[str, str]]:
    """(kind, state) of a job's runs plus its dataset's extraction runs (named extract-<dataset>)."""
    assert d.queue is not None
    runs = d.queue.list_runs(job=job) + d.queue.list_runs(job=f"extract-{dataset or job}")
    return [(r.kind, r.state) for r in runs]


def test_job_file_queues_extraction_and_training_once(daemon, tmp_path: Path) -> None:
    d = daemon()
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _job(tmp_path, "birds", "birds")
    d.events.handle(JobEvent(path, "created"))
    assert sorted(_kinds(d, "birds")) == [("extract", "queued"), ("train", "queued")]
    d.events.handle(JobEvent(path, "modified"))  # unchanged content: nothing new
    assert len(_kinds(d, "birds")) == 2
    _job(tmp_path, "birds", "birds", steps=30)  # an edit: a new run supersedes the old one
    d.events.handle(JobEvent(path, "modified"))
    assert sorted(_kinds(d, "birds")) == [("extract", "queued"), ("train", "cancelled"),
                                          ("train", "queued")]
    old, new = d.queue.list_runs(job="birds")
    assert old.error == f"superseded by {new.id}" and new.config["steps"] == 30
    d.events.handle(JobEvent(path, "deleted"))
    assert "birds" not in d.jobs


def test_two_jobs_on_one_dataset_share_one_extraction_run(daemon, tmp_path: Path) -> None:
    d = daemon()
    make_dataset(tmp_path / "datasets" / "birds", 3)
    for name in ("a", "b"):
        d.events.handle(JobEvent(_job(tmp_path, name, "birds", steps=10 + len(name)), "created"))
    assert d.queue is not None
    assert [r.kind for r in d.queue.list_runs(job="extract-birds")] == ["extract"]
    assert [r.kind for r in d.queue.list_runs(job="a")] == ["train"]
    assert [r.kind for r in d.queue.list_runs(job="b")] == ["train"]


def test_broken_job_is_ignored_and_others_go_on(daemon, tmp_path: Path) -> None:
    d = daemon()
    make_dataset(tmp_path / "datasets" / "birds", 3)
    broken = tmp_path / "jobs" / "broken.toml"
    broken.write_text('dataset = "birds"\n[train]\nstepz = 3\n')
    d.events.handle(JobEvent(broken, "created"))
    d.events.handle(JobEvent(_job(tmp_path, "good", "birds"), "created"))
    assert "broken" not in d.jobs and _kinds(d, "broken", "none") == []
    assert _kinds(d, "good", "birds") == [("train", "queued"), ("extract", "queued")]


def test_invalid_dataset_queues_nothing(daemon, tmp_path: Path) -> None:
    d = daemon()
    bad = tmp_path / "datasets" / "bad"
    make_dataset(bad, 2)
    (bad / "clip01.wav").write_text("not audio")
    d.events.handle(JobEvent(_job(tmp_path, "bad", "bad"), "created"))
    d.events.handle(DatasetEvent(tmp_path / "datasets", "bad", "changed", ("clip01.wav",)))
    assert _kinds(d, "bad") == [] and d.events.train_due == {}


def test_dataset_change_queues_extraction_now_and_training_after_settling(
        daemon, tmp_path: Path) -> None:
    d = daemon()
    ds = tmp_path / "datasets" / "birds"
    ds.mkdir()
    d.events.handle(JobEvent(_job(tmp_path, "auto", "birds", settle_minutes=0.0), "created"))
    d.events.handle(JobEvent(_job(tmp_path, "manual", "birds", on_change=False), "created"))
    assert _kinds(d, "auto", "birds") == [] and _kinds(d, "manual", "birds") == []  # empty: invalid
    make_dataset(ds, 3)
    d.events.handle(DatasetEvent(tmp_path / "datasets", "birds", "changed", ("clip00.npz",)))
    # one extraction for the variant, training only after the debounce
    assert _kinds(d, "auto", "birds") == [("extract", "queued")]
    assert _kinds(d, "manual", "none") == []
    assert "auto" in d.events.train_due and "manual" not in d.events.train_due
    d.events.due_training()
    assert sorted(_kinds(d, "auto", "birds")) == [("extract", "queued"), ("train", "queued")]
    assert _kinds(d, "manual", "none") == []


def test_requests_cancel_retry_enqueue_skip(daemon, tmp_path: Path) -> None:
    d = daemon()
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    d.events.handle(JobEvent(_job(tmp_path, "birds", "birds"), "created"))
    train = [r for r in d.queue.list_runs(job="birds") if r.kind == "train"][0]
    ids = [d.queue.request("cancel", run_id=train.id), d.queue.request("retry", run_id=train.id),
           d.queue.request("skip", run_id=train.id), d.queue.request("cancel", run_id="nope"),
           d.queue.request("enqueue", job="birds"), d.queue.request("enqueue", job="ghost")]
    d.requests.handle_pending()
    results = [d.queue.get_request(i).result for i in ids]
    assert results[0] == f"cancelled {train.id}"
    assert results[1].startswith(f"queued {train.id} again")
    assert results[2].endswith("outside the training windows") and train.id in d.skip_window
    assert results[3].startswith("no run with id 'nope'")
    # the retried run is queued again: an identical run is never queued twice (21.8)
    assert results[4].startswith("nothing queued: an identical run is already queued")
    assert results[5].startswith("no job file")
    assert d.queue.pending_requests() == []
    d.queue.set_state(train.id, "cancelled")  # once it has ended, enqueue forces a new run
    again = d.queue.request("enqueue", job="birds")
    d.requests.handle_pending()
    said = d.queue.get_request(again).result
    assert said.startswith("queued ") and train.id not in said


def test_training_waits_for_the_window_but_extraction_does_not(daemon, tmp_path: Path) -> None:
    hour = (datetime.now().hour + 2) % 24
    d = daemon(f'[schedule]\ntraining_windows = ["{hour:02d}:00-{(hour + 1) % 24:02d}:00"]\n')
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    d.events.handle(JobEvent(_job(tmp_path, "birds", "birds"), "created"))
    first = d._pick()
    assert first is not None and first.kind == "extract"
    d.queue.claim(first.id)
    d.queue.set_state(first.id, "done")
    assert d._pick() is None  # the training run waits
    train = d.queue.list_runs(states=["queued"])[0]
    d.skip_window.add(train.id)
    assert d._pick().id == train.id


def test_a_run_that_cannot_start_fails_and_the_daemon_goes_on(daemon, tmp_path: Path,
                                                              monkeypatch) -> None:
    from selvad.runs.worker import RunProcess

    d = daemon()
    assert d.queue is not None
    make_dataset(tmp_path / "datasets" / "birds", 3)
    d.events.handle(JobEvent(_job(tmp_path, "birds", "birds"), "created"))

    def boom(self) -> None:
        raise OSError("read-only file system")

    monkeypatch.setattr(RunProcess, "start", boom)
    d._maybe_start_next()
    failed = d.queue.list_runs(states=["failed"])  # each failed start frees the slot again
    assert len(failed) == 2 and all("read-only file system" in r.error for r in failed)
    assert d.running == {}


def test_interrupted_runs_are_requeued_at_start_up(daemon, tmp_path: Path) -> None:
    d = daemon()
    assert d.queue is not None
    run = d.queue.enqueue("birds", "birds", {"variant": "tiny_16k"}, {"files": []})
    d.queue.claim(run.id)
    d.queue.set_state(run.id, "training")
    d._requeue_interrupted()
    assert d.queue.get(run.id).state == "queued"


def test_retention_prunes_finished_runs_only(daemon, tmp_path: Path) -> None:
    d = daemon("[retention]\nkeep_last_checkpoints = 1\nkeep_spread = false\n")
    assert d.queue is not None
    runs = []
    for state in ("done", "training"):
        run = d.queue.enqueue("birds", "birds", {"state": state}, {"files": []})
        d.queue.claim(run.id)
        d.queue.set_state(run.id, "training", output_dir=str(tmp_path / "out" / "birds" / run.id))
        if state == "done":
            d.queue.set_state(run.id, "done")
        out = tmp_path / "out" / "birds" / run.id
        out.mkdir(parents=True)
        for s in (10, 20, 30):
            (out / f"adapter_step{s:05d}.pt").write_bytes(b"x")
        (out / "adapter_final.pt").write_bytes(b"x")
        runs.append(out)
    d.retention()
    assert sorted(p.name for p in runs[0].iterdir()) == ["adapter_final.pt", "adapter_step00030.pt"]
    assert len(list(runs[1].iterdir())) == 4  # the training run is untouched


def test_a_reload_that_changes_web_or_executor_says_restart(make_config, daemon) -> None:
    """The page's server and the executor are bound at start: a reload that changes them
    warns with the fix instead of pretending to apply them."""
    from structlog.testing import capture_logs

    from selvad.config.daemon import load_config

    d = daemon()
    new = load_config(make_config('[web]\nlisten = "127.0.0.1:9999"\n'))
    with capture_logs() as logs:
        d._reload_executor(new)
    warned = [e for e in logs if e["event"] == "config.web_changed"]
    assert len(warned) == 1 and "restart" in warned[0]["fix"]
    with capture_logs() as logs:
        d._reload_executor(load_config(make_config("")))  # the same [web] again: nothing said
    assert not [e for e in logs if e["event"].startswith("config.")]


def test_a_symlinked_job_file_is_refused_with_a_problem_the_page_shows(daemon,
                                                                       tmp_path: Path) -> None:
    d = daemon()
    make_dataset(tmp_path / "datasets" / "birds", 3)
    target = _job(tmp_path, "real", "birds").rename(tmp_path / "elsewhere.toml")
    link = tmp_path / "jobs" / "linked.toml"
    link.symlink_to(target)
    d.events.handle(JobEvent(link, "created"))
    assert "linked" not in d.jobs and _kinds(d, "linked", "birds") == []
    problem = d.events.watched.get("job", "linked").problem
    assert problem and "symbolic link" in problem and "copy" in problem



def test_a_failed_tick_logs_where_not_what_the_error_quoted(daemon, monkeypatch) -> None:
    """An error inside one step of the main loop is logged by type and code frames only: its
    message may quote a job file or a clip's metadata, which stays out of the log."""
    from structlog.testing import capture_logs

    d = daemon()

    def leak() -> None:
        raise ValueError('jobs/secret.toml: prompt = "the client\'s unreleased trailer"')

    monkeypatch.setattr(d, "_heartbeat", leak)
    with capture_logs() as logs:
        d._tick()  # the step fails, the tick (and the daemon) goes on
    failed = [e for e in logs if e["event"] == "daemon.tick_failed"]
    assert len(failed) == 1 and failed[0]["error"] == "ValueError"
    assert failed[0]["step"] == "leak" and failed[0]["frames"][-1].endswith("in leak")
    assert "unreleased" not in repr(logs)


def test_a_job_whose_variant_the_weights_cannot_run_is_a_problem_at_load(
        make_config, tmp_path: Path, tiny_weights: Path) -> None:
    """The start-up probe (a real child) checks every variant against the weights: a job for
    one the weights cannot run queues nothing, and says which files and which command, in
    the problem `selvad status` and the page show; enqueue says the same; a job whose
    variant can run is queued as before."""
    from selvad.service.stackprobe import probe_in_child

    d = Daemon(make_config(f'weights_dir = "{tiny_weights}"\n'))  # in [paths]
    d.queue = RunQueue(d.cfg.paths.queue_path)
    probe = probe_in_child(weights_dir=d.cfg.paths.weights_dir)
    assert probe.stack.ok and probe.weights is not None
    assert probe.weights["tiny_16k"] == "" and "selva-weights check" in probe.weights["small_16k"]
    d.weights_problems = probe.weights
    make_dataset(tmp_path / "datasets" / "birds", 3)
    path = _job(tmp_path, "big", "birds")
    path.write_text(path.read_text().replace("tiny_16k", "small_16k"))
    d.events.handle(JobEvent(path, "created"))
    assert _kinds(d, "big", "birds") == [] and "big" not in d.jobs
    seen = d.events.watched.get("job", "big")
    assert seen is not None and seen.problem.startswith("variant small_16k cannot run from")
    asked = d.queue.request("enqueue", job="big")
    d.requests.handle_pending()
    assert d.queue.get_request(asked).result.startswith("nothing queued: variant small_16k cannot run")
    d.events.handle(JobEvent(_job(tmp_path, "birds", "birds"), "created"))
    assert ("train", "queued") in _kinds(d, "birds")


def test_a_dataset_no_job_names_is_validated_and_listed(daemon, tmp_path: Path) -> None:
    """A dataset folder without a job is checked when it settles (for the variant a new job
    would get), kept for the page with "no job uses it yet", and its errors are a problem."""
    import os

    from structlog.testing import capture_logs

    from selvad.datasets.report import load_last_report

    d = daemon('[defaults]\nvariant = "tiny_16k"\n')
    make_dataset(tmp_path / "datasets" / "owls", 3)
    (tmp_path / "datasets" / "owls" / "clip01.wav").write_bytes(b"not audio")
    with capture_logs() as logs:
        d.events.handle(DatasetEvent(tmp_path / "datasets", "owls", "changed", ("clip01.wav",)))
    said = [e for e in logs if e["event"] == "dataset.unused"]
    assert len(said) == 1 and said[0]["variant"] == "tiny_16k" and said[0]["error_count"] >= 1
    path = os.path.abspath(tmp_path / "datasets" / "owls")
    kept = load_last_report(d.cfg.paths.state_dir, path)
    assert kept is not None and kept["advice"][0].startswith("no job uses this dataset yet")
    seen = d.events.watched.get("dataset", path)
    assert seen is not None and seen.problem.startswith("1 error(s) for tiny_16k")
    assert _kinds(d, "owls") == []  # nothing is queued without a job
