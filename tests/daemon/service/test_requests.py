"""The request handler does not trust the request rows: job names must be safe names of
job files inside the jobs directory, run ids must be ids (never paths)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.demo import make_dataset
from selvad.runs.queue import RunQueue
from selvad.service.daemon import Daemon

JOB = 'dataset = "birds"\nvariant = "tiny_16k"\n[train]\nsteps = 20\n'


@pytest.fixture
def daemon(make_config: Callable[[str], Path], tmp_path: Path) -> Daemon:
    d = Daemon(make_config(""))
    d.queue = RunQueue(d.cfg.paths.queue_path)
    make_dataset(tmp_path / "datasets" / "birds", 3)
    return d


def _answer(d: Daemon, action: str, **kw: str) -> str:
    assert d.queue is not None
    req = d.queue.request(action, **kw)  # a row as any writer of the database may leave it
    d.requests.handle_pending()
    result = d.queue.get_request(req).result
    assert result is not None
    return result


@pytest.mark.parametrize("name", ["../outside/evil", "/abs/evil", "sub/evil", ".hidden",
                                  "evil\n", "x" * 65])
def test_enqueue_refuses_names_that_are_not_job_names(daemon: Daemon, tmp_path: Path,
                                                      name: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.toml").write_text(JOB)  # a valid job file outside the jobs directory
    (tmp_path / "jobs" / "sub").mkdir()
    (tmp_path / "jobs" / "sub" / "evil.toml").write_text(JOB)
    result = _answer(daemon, "enqueue", job=name)
    assert result.startswith(f"refused: {name!r} is not a job name"), result
    assert daemon.queue is not None and daemon.queue.list_runs() == []
    assert daemon.jobs == {}


def test_enqueue_of_a_fifo_job_file_answers_at_once(daemon: Daemon, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "jobs" / "pipe.toml")
    result = _answer(daemon, "enqueue", job="pipe")
    assert "not a regular file" in result and "pipe.toml" in result, result


def test_enqueue_of_a_good_job_still_works(daemon: Daemon, tmp_path: Path) -> None:
    (tmp_path / "jobs" / "birds.toml").write_text(JOB)
    assert _answer(daemon, "enqueue", job="birds").startswith("queued ")


@pytest.mark.parametrize("action", ["cancel", "retry", "skip"])
@pytest.mark.parametrize("run_id", ["../../etc", "a/b", ".x"])
def test_run_ids_that_are_paths_are_refused(daemon: Daemon, action: str, run_id: str) -> None:
    assert _answer(daemon, action, run_id=run_id).startswith(
        f"refused: {run_id!r} is not a run id")


def _cancelled_run(d: Daemon, tmp_path: Path) -> str:
    assert d.queue is not None
    (tmp_path / "jobs" / "birds.toml").write_text(JOB)
    (run_id,) = _answer(d, "enqueue", job="birds").removeprefix("queued ").split(", ")
    assert _answer(d, "cancel", run_id=run_id) == f"cancelled {run_id}"
    return run_id


def test_retry_says_it_runs_the_old_config_and_offers_the_current(daemon: Daemon,
                                                                 tmp_path: Path) -> None:
    d = daemon
    assert d.queue is not None
    run_id = _cancelled_run(d, tmp_path)
    (tmp_path / "jobs" / "birds.toml").write_text(JOB.replace("steps = 20", "steps = 50"))
    answer = _answer(d, "retry", run_id=run_id)
    assert answer.startswith(f"queued {run_id} again with the config it ran"), answer
    assert f"`selvad retry {run_id} --current`" in answer
    assert d.queue.get(run_id).config["steps"] == 20


def test_retry_current_queues_the_job_files_config(daemon: Daemon, tmp_path: Path) -> None:
    d = daemon
    assert d.queue is not None
    run_id = _cancelled_run(d, tmp_path)
    answer = _answer(d, "retry", run_id=run_id, job="birds")  # unchanged: the same run
    assert answer.startswith(f"queued {run_id} again: the job file's current config"), answer
    assert _answer(d, "cancel", run_id=run_id) == f"cancelled {run_id}"
    (tmp_path / "jobs" / "birds.toml").write_text(JOB.replace("steps = 20", "steps = 50"))
    answer = _answer(d, "retry", run_id=run_id, job="birds")
    assert answer.startswith("queued ") and f"{run_id} keeps the config it ran" in answer
    new_id = answer.split()[1]
    assert d.queue.get(new_id).config["steps"] == 50 and d.queue.get(new_id).state == "queued"
    assert d.queue.get(run_id).state == "cancelled"


def test_retry_current_refuses_a_job_that_is_a_path(daemon: Daemon, tmp_path: Path) -> None:
    run_id = _cancelled_run(daemon, tmp_path)
    assert _answer(daemon, "retry", run_id=run_id, job="../x").startswith("refused: ")


def _cancelled_run_with_a_checkpoint(d: Daemon, tmp_path: Path) -> tuple[str, Path]:
    run_id = _cancelled_run(d, tmp_path)
    run_dir = d.cfg.paths.output_root / "birds" / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "adapter_step00010.pt").write_bytes(b"x")
    return run_id, run_dir


def test_retry_says_where_the_run_starts_from_its_run_directory(daemon: Daemon,
                                                               tmp_path: Path) -> None:
    d = daemon
    assert d.queue is not None
    run_id, run_dir = _cancelled_run_with_a_checkpoint(d, tmp_path)
    assert "it resumes from its newest checkpoint" in _answer(d, "retry", run_id=run_id)
    assert _answer(d, "cancel", run_id=run_id) == f"cancelled {run_id}"
    (run_dir / "adapter_step00010.pt").unlink()
    run_dir.rmdir()  # deleted while it ran
    answer = _answer(d, "retry", run_id=run_id)
    assert f"it starts from step 0: its run directory {run_dir} is gone" in answer, answer
    assert "resumes" not in answer


def test_retry_after_clips_changed_says_it_cannot_resume_and_current_starts_fresh(
        daemon: Daemon, tmp_path: Path) -> None:
    """A checkpoint holds its clips: with a clip added since, `retry` answers at once that
    the run cannot resume (not "it resumes" and a failure after the extraction), and
    `--current` queues a fresh run on the current clips."""
    d = daemon
    assert d.queue is not None
    run_id, run_dir = _cancelled_run_with_a_checkpoint(d, tmp_path)
    birds = tmp_path / "datasets" / "birds"
    (birds / "prompts.txt").write_text("clip00.npz: a finch\n")  # prompts: still resumable
    assert "it resumes from its newest checkpoint" in _answer(d, "retry", run_id=run_id)
    assert _answer(d, "cancel", run_id=run_id) == f"cancelled {run_id}"
    for suffix in (".npz", ".wav"):
        (birds / f"clip09{suffix}").write_bytes((birds / f"clip00{suffix}").read_bytes())
    answer = _answer(d, "retry", run_id=run_id)
    assert answer.startswith(f"not retried: the clips of dataset birds changed since {run_id}")
    assert "(1 added)" in answer and f"`selvad retry {run_id} --current`" in answer
    assert d.queue.get(run_id).state == "cancelled"
    answer = _answer(d, "retry", run_id=run_id, job="birds")
    assert answer.startswith("queued ") and f"{run_id} keeps the config it ran" in answer
    new = d.queue.get(answer.split()[1])
    assert new.state == "queued" and new.id != run_id and new.manifest != d.queue.get(run_id).manifest
