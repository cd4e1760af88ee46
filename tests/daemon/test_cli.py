"""`selvad` commands against a state database (no daemon running): status, runs, requests,
init-job, validate passthrough, exit codes and messages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.cli import main
from selvad.display import format_duration, progress_bar
from selvad.runs.queue import RunQueue


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


def test_status_without_a_database_says_how_to_start(config: Path, capsys) -> None:
    assert main(["status", "--config", str(config)]) == 1
    assert "no state database" in capsys.readouterr().err


def test_status_shows_the_current_run_with_a_bar(config: Path, queue: RunQueue, capsys) -> None:
    run_id = _training(queue)
    queue.enqueue("birds", "birds", {"steps": 300}, {"files": []})
    assert main(["status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"current: {run_id}" in out and "step 50/200" in out and "loss 0.1234" in out
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


def test_init_job_writes_once(config: Path, tmp_path: Path, capsys) -> None:
    args = ["init-job", "birds", "--dataset", "birds", "--variant", "tiny_16k", "--config",
            str(config)]
    assert main(args) == 0
    text = (tmp_path / "jobs" / "birds.toml").read_text()
    assert 'dataset = "birds"' in text and 'variant = "tiny_16k"' in text
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
