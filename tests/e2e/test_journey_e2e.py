"""End-to-end: a sound designer's journey with the real daemon.

`init-job` says when training starts; an edit within the job's settle time gives one run
with the edited config; adding `[[sweep]]` supersedes the queued plain run; a dataset that
becomes invalid holds its queued runs; `status` lists the invalid job file and dataset and
a failed run's sentence with its log path; a SIGHUP with nothing changed reports no change.
Training runs wait in a closed training window (extraction is not restricted), so queued
runs stay queued while the test looks at them.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from selvad.runs.queue import WAITING

from .conftest import DaemonTree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SETTLE_MIN = 0.05  # 3 s: the jobs' own settle time


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _train(tree: DaemonTree, job: str, states: tuple[str, ...] = ("queued",)) -> list:
    return [r for r in tree.runs(job=job, kind="train") if r.state in states]


def _edit_and_sweep(tree: DaemonTree) -> list:
    """init-job, an edit within the settle time, then a sweep; returns the sweep's runs."""
    made = tree.cli("init-job", "sfx", "--dataset", "birds", "--variant", "tiny_16k")
    assert made.returncode == 0 and "queues its training 3 s after your last save" in made.stdout
    job = tree.root / "jobs" / "sfx.toml"
    time.sleep(1.0)  # the daemon has loaded the template; the user edits it within 3 s
    tree.write_job("sfx", "birds", settle_minutes=SETTLE_MIN, steps=7)
    (run,) = tree.wait_for(lambda: _train(tree, "sfx"), 30, "the edited job's run")
    time.sleep(SETTLE_MIN * 60 + 1.0)  # nothing else comes of the template or the edit
    assert [r.id for r in tree.runs(job="sfx", kind="train")] == [run.id]
    assert run.config["steps"] == 7  # the edited config, not the template's 2000

    _replace(job, job.read_text() + '[[sweep]]\nid = "r2"\nlora.rank = 2\n'
                                    '[[sweep]]\nid = "r8-long-sweep-name"\nlora.rank = 8\n')
    sweep = tree.wait_for(lambda: len(_train(tree, "sfx")) == 2 and _train(tree, "sfx"), 30,
                          "the sweep's runs")
    plain = tree.queue.get(run.id)
    first = next(r for r in sweep if r.sweep_id == "r2")
    assert plain.state == "cancelled" and plain.error == f"superseded by {first.id}"
    return sweep


def _fail_one(tree: DaemonTree) -> None:
    """A job whose LoRA targets match no layer fails in its child (started by a skip)."""
    tree.add_clips("owls", 3, seed=1)
    _replace(tree.root / "jobs" / "boom.toml",
             'dataset = "owls"\nvariant = "tiny_16k"\n[lora]\nrank = 4\ntarget = ["nosuch"]\n'
             '[train]\nsteps = 4\nsave_every = 2\nprecision = "fp32"\n'
             '[trigger]\nsettle_minutes = 0\n')
    (run,) = tree.wait_for(lambda: _train(tree, "boom"), 30, "boom's run")
    tree.queue.request("skip", run_id=run.id)  # may start outside the training window
    failed = tree.wait_state(run.id, ("failed", "done"), 120)
    assert failed.state == "failed" and failed.error.endswith("worker.log"), failed.error


def test_the_journey(tree: DaemonTree) -> None:
    with open(tree.config, "a") as f:  # training never starts by itself during the test
        f.write('[schedule]\ntraining_windows = ["mon 00:00-00:01"]\n'
                f'[defaults.trigger]\nsettle_minutes = {SETTLE_MIN}\n')
    tree.add_clips("birds", 3)
    tree.start()
    tree.wait_for(lambda: tree.events("daemon.ready"), 30, "daemon.ready")
    sweep = _edit_and_sweep(tree)

    clip = tree.dataset("birds") / "clip00.wav"  # the dataset becomes invalid
    _replace(clip, "not audio")
    tree.wait_for(lambda: all(tree.queue.get(r.id).error == WAITING for r in sweep), 30,
                  "the sweep's runs to wait")
    _replace(tree.root / "jobs" / "broken.toml", 'dataset = 3\n[train]\nsteps = "many"\n')
    tree.wait_for(lambda: tree.events("job.invalid"), 30, "job.invalid")
    _fail_one(tree)

    status = tree.cli("status")
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert "problem: job broken: " in out and str(tree.root / "jobs" / "broken.toml") in out
    assert f"problem: dataset {tree.dataset('birds')}: " in out and "selvad validate" in out
    assert f"note: {WAITING}" in out and "superseded by" in out
    failed = _train(tree, "boom", ("failed",))[0]
    assert f"error: {failed.error.splitlines()[0]}" in out and "worker.log" in out

    seen = len(tree.events())  # a SIGHUP with nothing changed is no change
    tree.signal(signal.SIGHUP)
    tree.wait_for(lambda: tree.events("daemon.reloaded"), 30, "daemon.reloaded")
    time.sleep(2.0)  # the new watcher's first scan has settled and been handled
    after = tree.events()[seen:]
    assert [e for e in after if e.get("event") == "job.loaded"], after
    for e in after:
        assert e.get("change") != "created" and e.get("event") not in (
            "dataset.changed", "job.training_due"), e
