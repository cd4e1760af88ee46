"""End-to-end: the real daemon with two CPU slots (`[device] name = ["cpu", "cpu"]`) runs two
runs at once, each in its own child; a crash of one touches the other, and cancel and retry
act on one run only."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e


def _two_slots(tree: DaemonTree) -> None:
    text = tree.config.read_text()
    assert 'name = "cpu"' in text
    tree.config.write_text(text.replace('name = "cpu"', 'name = ["cpu", "cpu"]'))


def _child_pid(tree: DaemonTree, run_id: str) -> int:
    return int((tree.root / "state" / "runs" / run_id / "child.pid").read_text())


def _ckpts(tree: DaemonTree, job: str, run_id: str) -> list[Path]:
    return sorted((tree.root / "out" / job / run_id).glob("adapter_step*.pt"))


@pytest.mark.slow
def test_two_slots_run_two_runs_at_once_crash_cancel_retry(tree: DaemonTree) -> None:
    _two_slots(tree)
    for name in ("alpha", "beta"):
        tree.add_clips(name, 3, seed=len(name))
        tree.write_job(name, name, steps=400, save_every=10, log_every=2)
    tree.start()
    tree.wait_for(lambda: tree.events("daemon.executor"), 60, "daemon.executor")
    assert tree.events("daemon.executor")[0]["slots"] == ["cpu#0", "cpu#1"]

    def both_training():
        runs = [r for r in tree.runs(kind="train") if r.state == "training" and (r.step or 0) >= 2]
        return runs if len(runs) == 2 else None

    a, b = sorted(tree.wait_for(both_training, 240, "two runs training at once"),
                  key=lambda r: r.job)
    assert {a.device, b.device} == {"cpu#0", "cpu#1"}
    assert _child_pid(tree, a.id) != _child_pid(tree, b.id)
    status = tree.cli("status").stdout
    assert f"current: {a.id}" in status and f"current: {b.id}" in status, status
    assert f"on {a.device}" in status and f"on {b.device}" in status, status
    current = json.loads(tree.cli("status", "--json").stdout)["current"]
    assert sorted(r["device"] for r in current) == ["cpu#0", "cpu#1"]
    started = [e for e in tree.events("run.child_started") if e["run_id"] in (a.id, b.id)]
    assert {e["device"] for e in started} == {"cpu#0", "cpu#1"}  # the log names the device

    # a crash of alpha's child (SIGSEGV) fails alpha only; beta trains on
    tree.wait_for(lambda: _ckpts(tree, "alpha", a.id), 120, "alpha's first checkpoint")
    os.killpg(_child_pid(tree, a.id), signal.SIGSEGV)
    failed = tree.wait_state(a.id, ("failed",), 60)
    assert "SIGSEGV" in (failed.error or ""), failed.error
    step_b = tree.queue.get(b.id).step or 0
    tree.wait_for(lambda: (tree.queue.get(b.id).step or 0) > step_b + 2, 120,
                  "beta to train on after alpha crashed")
    assert tree.queue.get(b.id).state == "training"

    # retry alpha: it takes the free slot again and resumes from its checkpoint
    assert tree.cli("retry", a.id).returncode == 0
    tree.wait_for(lambda: tree.queue.get(a.id).state == "training", 120, "alpha again")
    assert tree.queue.get(b.id).state == "training"

    # cancel beta: it checkpoints and stops; alpha trains on
    cancel = tree.cli("cancel", b.id)
    assert cancel.returncode == 0 and b.id in cancel.stdout, cancel.stdout + cancel.stderr
    tree.wait_state(b.id, ("cancelled",), 90)
    step_a = tree.queue.get(a.id).step or 0
    tree.wait_for(lambda: (tree.queue.get(a.id).step or 0) > step_a + 2, 120,
                  "alpha to train on after beta was cancelled")
    assert tree.queue.get(a.id).state == "training"
    resumed = [e for e in tree.events("run.resumed") if e["run_id"] == a.id]
    assert resumed and resumed[0]["step"] >= 10
    tree.signal(signal.SIGTERM)
    assert tree.wait_exit(120) == 0
    assert tree.queue.get(a.id).state == "queued"  # interrupted: resumes at the next start


def test_a_gpu_the_machine_lacks_stops_the_daemon_with_the_fix(tree: DaemonTree) -> None:
    text = tree.config.read_text().replace('name = "cpu"', 'name = ["cuda:0", "cuda:99"]')
    tree.config.write_text(text)
    tree.start()
    assert tree.wait_exit(120) == 78
    [ev] = tree.events("daemon.bad_executor")
    assert ev["message"].startswith(f"{tree.config}:device.name names ")
    assert "'cuda:99' but this machine has" in ev["message"], ev["message"]
    assert ("list only" in ev["message"] or 'write name = "cpu"' in ev["message"])
    assert not tree.events("daemon.ready")
