"""`selvad` commands against a state database (no daemon running): status, runs, requests,
init-job, validate passthrough, exit codes and messages."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.cli import main
from selvad.display import eta_text, format_duration, progress_bar
from selvad.runs.queue import RunQueue

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(make_config: Callable[[str], Path]) -> Path:
    return make_config("")


@pytest.fixture
def queue(config: Path, tmp_path: Path) -> RunQueue:
    return RunQueue(tmp_path / "state" / "queue.sqlite3")


def _training(queue: RunQueue) -> str:
    run = queue.enqueue("birds", "birds", {"steps": 200}, {"files": []})
    queue.claim(run.id)
    queue.set_state(run.id, "training")
    queue.update_progress(run.id, step=50, total_steps=200, loss=0.1234, samples_per_s=3.5,
                          eta_s=125)
    return run.id


def test_progress_bar_and_durations() -> None:
    assert progress_bar(50, 200, width=8) == "[##......]  25%"
    assert progress_bar(None, None, width=4) == "[....]   0%"
    assert format_duration(3725) == "1h02m" and format_duration(65) == "1m05s"
    assert format_duration(None) == "?"
    # at 100 % the last checkpoint and its sample still take time: never "ETA 0s"
    assert eta_text(50, 200, 125.0) == "ETA 2m05s"
    assert eta_text(200, 200, 0.0) == "last checkpoint and sample next"


def test_status_without_a_database_says_how_to_start(config: Path, capsys) -> None:
    assert main(["status", "--config", str(config)]) == 1
    assert "no state database" in capsys.readouterr().err


def test_status_shows_the_current_run_with_a_bar(config: Path, queue: RunQueue, capsys) -> None:
    run_id = _training(queue)
    queue.enqueue("birds", "birds", {"steps": 300}, {"files": []})
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"current: {run_id}" in out and "step 50/200" in out and "train loss (smoothed) 0.1234" in out
    assert "ETA 2m05s" in out and "#" in out and "queued (1)" in out
    assert main(["status", "--json", "--config", str(config)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["counts"]["training"] == 1 and data["counts"]["queued"] == 1
    assert data["current"][0]["step"] == 50


def test_runs_lists_one_job(config: Path, queue: RunQueue, capsys) -> None:
    run_id = _training(queue)
    assert main(["runs", "birds", "--json", "--config", str(config)]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [run_id]
    assert main(["runs", "other", "--config", str(config)]) == 0
    assert "no runs" in capsys.readouterr().out


def test_requests_are_recorded_for_the_daemon(config: Path, queue: RunQueue, capsys) -> None:
    run_id = _training(queue)
    assert main(["cancel", "nope", "--config", str(config), "--wait", "0"]) == 1
    assert "no run with id 'nope'" in capsys.readouterr().err
    assert main(["cancel", run_id, "--config", str(config), "--wait", "0"]) == 0
    assert "recorded" in capsys.readouterr().out
    assert [(r.action, r.run_id) for r in queue.pending_requests()] == [("cancel", run_id)]
    assert main(["enqueue", "ghost", "--config", str(config), "--wait", "0"]) == 1
    assert "init-job ghost" in capsys.readouterr().err


def test_enqueue_render_is_recorded_for_the_job(config: Path, queue: RunQueue, tmp_path: Path, capsys) -> None:
    (tmp_path / "jobs" / "birds.toml").write_text('dataset = "birds"\n')
    assert main(["enqueue", "birds", "--render", "--config", str(config), "--wait", "0"]) == 0
    assert "recorded (render request" in capsys.readouterr().out
    assert [(r.action, r.run_id, r.job) for r in queue.pending_requests()] == [("render", None, "birds")]
    with pytest.raises(ValueError, match="'render' request needs a job name"):
        queue.request("render")


def test_init_job_writes_once(config: Path, tmp_path: Path, capsys) -> None:
    args = ["init-job", "birds", "--dataset", "birds", "--variant", "tiny_16k", "--config",
            str(config)]
    assert main(args) == 0
    text = (tmp_path / "jobs" / "birds.toml").read_text()
    assert 'dataset = "birds"' in text and 'variant = "tiny_16k"' in text
    out = capsys.readouterr().out
    assert "queues its training 5 minutes after your last save" in out, out
    assert main(args) == 1
    assert "exists already" in capsys.readouterr().err


def test_invalid_config_exits_2_with_the_problems(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[watch]\nsettle_secs = 3\n")
    assert main(["status", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "watch.settle_secs" in err and "settle_seconds" in err


def test_validate_is_passed_through(tmp_path: Path, capsys) -> None:
    assert main(["validate", str(tmp_path / "missing"), "--variant", "tiny_16k"]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_default_config_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    from selvad.cli import default_config

    monkeypatch.setenv("SELVAD_CONFIG", str(tmp_path / "x.toml"))
    assert default_config() == tmp_path / "x.toml"
    monkeypatch.delenv("SELVAD_CONFIG")
    assert str(default_config()) == "/etc/selvad/selvad.toml"


@pytest.mark.parametrize("name", ["../outside/evil", "/tmp/evil", "sub/evil", ".evil"])
def test_enqueue_refuses_a_path_as_job_name(config: Path, queue: RunQueue, tmp_path: Path,
                                            capsys, name: str) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "evil.toml").write_text('dataset = "birds"\n')  # a valid job
    (tmp_path / "jobs" / "sub").mkdir()
    (tmp_path / "jobs" / "sub" / "evil.toml").write_text('dataset = "birds"\n')
    assert main(["enqueue", name, "--config", str(config), "--wait", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"selvad: {name!r} is not a job name") and err.count("\n") == 1
    assert "jobs/NAME.toml" in err
    assert queue.pending_requests() == []  # nothing for the daemon to load


@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_run_id_must_be_an_id(config: Path, queue: RunQueue, capsys, action: str) -> None:
    assert main([action, "../../etc/passwd", "--config", str(config), "--wait", "0"]) == 2
    assert "'../../etc/passwd' is not a run id" in capsys.readouterr().err
    assert queue.pending_requests() == []


def test_enqueue_of_a_fifo_job_file_says_so(config: Path, queue: RunQueue, tmp_path: Path,
                                            capsys) -> None:
    os.mkfifo(tmp_path / "jobs" / "pipe.toml")
    assert main(["enqueue", "pipe", "--config", str(config), "--wait", "0"]) == 1
    assert "pipe.toml is not a regular file" in capsys.readouterr().err


def test_status_into_a_closed_pipe_exits_quietly(config: Path, queue: RunQueue) -> None:
    """`selvad status | head -1`: the reader goes away; no BrokenPipeError traceback."""
    for i in range(1500):  # ~100 KiB of status lines: more than a pipe holds
        queue.enqueue(f"job{i}", "birds", {"steps": i}, {"files": []})
    cmd = f"{sys.executable} -m selvad.cli status --config {config} | head -1"
    res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert res.stdout.startswith("runs: 1500 queued") and res.stdout.count("\n") == 1
    assert res.stderr == "" and res.returncode == 141  # as a command killed by SIGPIPE
    r, w = os.pipe()
    os.close(r)  # a reader that has gone before the first line
    res = subprocess.run([sys.executable, "-m", "selvad.cli", "status", "--config", str(config)],
                         stdout=w, stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=60)
    os.close(w)
    assert res.stderr == "" and res.returncode == 141


def test_a_locked_state_database_is_one_sentence(config: Path, queue: RunQueue) -> None:
    from selvad.cli import state_problem
    from selvad.config.daemon import load_config

    cfg = load_config(config)
    holder = sqlite3.connect(cfg.paths.queue_path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # a stuck writer
    try:
        with pytest.raises(sqlite3.OperationalError) as info:
            sqlite3.connect(cfg.paths.queue_path, timeout=0).execute(
                "INSERT INTO requests (action, job, created_at) VALUES ('enqueue', 'x', 0)")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    message = state_problem(cfg, info.value)
    assert message.startswith(f"the state database {cfg.paths.queue_path} stayed locked")
    assert "try again" in message and "\n" not in message


def _finished(queue: RunQueue, n: int, job: str = "birds", sweep: str = "") -> list[str]:
    ids = []
    for i in range(n):
        run = queue.enqueue(job, "birds", {"steps": i}, {"files": []}, sweep_id=sweep)
        queue.set_state(run.id, "cancelled")
        ids.append(run.id)
    return ids


def test_status_all_and_filters_list_more_than_five(config: Path, queue: RunQueue,
                                                     capsys) -> None:
    ids = _finished(queue, 7) + _finished(queue, 1, job="owl")
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert sum(i in out for i in ids) == 5
    assert main(["status", "--all", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert all(i in out for i in ids)
    assert main(["status", "--job", "owl", "--state", "cancelled", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert ids[-1] in out and not any(i in out for i in ids[:-1])


def test_runs_columns_stay_aligned_with_long_sweep_ids(config: Path, queue: RunQueue,
                                                       capsys) -> None:
    _finished(queue, 1)
    _finished(queue, 1, sweep="rank16-lr3e-4-dropout0.1-logit-normal")
    assert main(["runs", "birds", "--config", str(config)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and lines[0].startswith("run id")
    # the created column starts at the same place on every line
    assert len({line.index("created") if i == 0 else len(line) - 16
                for i, line in enumerate(lines)}) == 1


def test_status_shows_problems_and_a_failed_runs_sentence(config: Path, queue: RunQueue,
                                                          capsys) -> None:
    from selvad.runs.watched import WatchedTable

    WatchedTable(queue).record("job", "broken", "/jobs/broken.toml",
                               problem="train.steps: must be > 0; fix the job file")
    run = queue.enqueue("birds", "birds", {}, {"files": []})
    queue.claim(run.id)
    queue.set_state(run.id, "failed", error="out of GPU memory at step 3: lower batch_size; "
                                            "the full log is /out/birds/r/worker.log\nTraceback")
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "problem: job broken: train.steps: must be > 0" in out and "/jobs/broken.toml" in out
    assert "error: out of GPU memory at step 3" in out and "/out/birds/r/worker.log" in out
    assert "Traceback" not in out
    assert main(["status", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["problems"][0]["name"] == "broken"


def test_requests_say_when_the_daemon_is_not_running(config: Path, queue: RunQueue,
                                                     tmp_path: Path, capsys) -> None:
    from selvad.runs.statelock import StateLock

    (run_id,) = _finished(queue, 1)
    assert main(["retry", run_id, "--current", "--config", str(config), "--wait", "0"]) == 0
    assert "the daemon is not running, it will act at next start" in capsys.readouterr().out
    (req,) = queue.pending_requests()
    assert (req.action, req.run_id, req.job) == ("retry", run_id, "birds")
    lock = StateLock.acquire(tmp_path / "state")  # as a running daemon holds it
    try:
        assert main(["cancel", run_id, "--config", str(config), "--wait", "0"]) == 0
        out = capsys.readouterr().out
        assert "not running" not in out and "no answer from the daemon" in out
    finally:
        lock.release()


def test_web_url_prints_the_link_with_the_token(config: Path, tmp_path: Path, capsys) -> None:
    """Before the daemon served: [web] listen's address and a token written into the state
    directory; then the URL the daemon recorded; one sentence when the token is unreadable."""
    assert main(["web-url", "--config", str(config)]) == 0
    token = (tmp_path / "state" / "web_token").read_text().strip()
    assert capsys.readouterr().out == f"http://127.0.0.1:8765/?token={token}\n"
    (tmp_path / "state" / "web_url").write_text("http://127.0.0.1:40001/\n")
    assert main(["web-url", "--config", str(config)]) == 0
    assert capsys.readouterr().out == f"http://127.0.0.1:40001/?token={token}\n"
    (tmp_path / "state" / "web_token").unlink()
    (tmp_path / "state" / "web_token").mkdir()
    assert main(["web-url", "--config", str(config)]) != 0
    err = capsys.readouterr().err
    assert "web_token" in err and "Traceback" not in err
