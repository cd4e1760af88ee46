"""End-to-end: the real daemon process on a temporary tree with the tiny model (CPU).

Each test starts `python -m selvad.cli run --config <tmp>/selvad.toml` and drives it the way
a user does: dropping clips, writing and editing job files, sending signals and running
`selvad status|runs|cancel|retry`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import tomllib
from datetime import datetime
from pathlib import Path

import pytest

from selvad.demo import EXPECTED_OUTPUTS, copy_slowly, make_dataset, missing_outputs

from .conftest import REPO, DaemonTree, scaled

pytestmark = pytest.mark.e2e


def _train_runs(tree: DaemonTree, job: str) -> list:
    return tree.runs(job=job, kind="train")


def _ckpt_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("adapter_step")) for p in run_dir.glob("adapter_step*.pt"))


def _progress_steps(run_dir: Path) -> list[int]:
    lines = (run_dir / "progress.jsonl").read_text().splitlines()
    events = [json.loads(x) for x in lines if x.strip()]
    return [e["step"] for e in events if e.get("event", "progress") == "progress"]


def _ts(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


@pytest.mark.slow  # ~70 s: the default run keeps the kill -9 resume, which trains to done too
def test_job_run_outputs_cli_edit_cancel_retry(tree: DaemonTree) -> None:
    """(h) READY=1 once armed, (b) every output file, (i) status/runs/cancel/retry,
    (c) an edited job queues a new run."""
    tree.add_clips("birds", 3)
    tree.write_job("birds", "birds")
    tree.start(notify=True)
    assert tree.notify is not None
    tree.wait_for(lambda: any("READY=1" in m for m in tree.notify.drain()), 30, "READY=1")
    assert tree.events("daemon.ready"), "READY is sent once the watches are armed"

    first = tree.wait_for(lambda: _train_runs(tree, "birds"), 30, "a training run")[0]
    run = tree.wait_state(first.id, ("done", "failed"), 180)
    assert run.state == "done", run.error
    run_dir = tree.root / "out" / "birds" / run.id
    assert missing_outputs(run_dir) == [], sorted(p.name for p in run_dir.iterdir())
    assert len(EXPECTED_OUTPUTS) == 9
    assert (tree.root / "out" / "birds" / "latest").resolve() == run_dir.resolve()
    meta = tomllib.loads((run_dir / "run.toml").read_text())
    assert meta["run"]["id"] == run.id and meta["config"]["steps"] == 20
    assert tomllib.loads((run_dir / "validation.toml").read_text())["ok"] is True
    extract = tree.runs(job="extract-birds", kind="extract")
    assert [r.state for r in extract] == ["done"]  # the shared cache was filled first

    # (i) the CLI against the running daemon
    status = tree.cli("status")
    assert status.returncode == 0 and "2 done" in status.stdout and run.id in status.stdout
    js = json.loads(tree.cli("status", "--json").stdout)
    assert js["counts"]["done"] == 2 and js["current"] == []
    runs = json.loads(tree.cli("runs", "birds", "--json").stdout)
    assert run.id in [r["id"] for r in runs]
    again = tree.cli("retry", run.id)
    assert again.returncode == 1 and "is done" in again.stdout
    assert tree.cli("cancel", "nope-0000").returncode == 1

    # (c) editing the job queues a new run; cancel it while it trains, then retry it
    tree.write_job("birds", "birds", seed=7, steps=30)
    second = tree.wait_for(lambda: [r for r in _train_runs(tree, "birds") if r.id != run.id],
                           30, "a second run after the edit")[0]
    assert second.config_hash != run.config_hash
    tree.wait_for(lambda: (r := tree.queue.get(second.id)) and r.state == "training"
                  and (r.step or 0) >= 5, 120, "the second run to train")
    text = tree.cli("status").stdout
    assert "current: " + second.id in text and "step " in text and "[" in text
    cancel = tree.cli("cancel", second.id)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    cancelled = tree.wait_state(second.id, ("cancelled",), 60)
    second_dir = tree.root / "out" / "birds" / second.id
    assert _ckpt_steps(second_dir), "cancel saves a checkpoint first"
    assert cancelled.step is not None
    retry = tree.cli("retry", second.id)
    assert retry.returncode == 0, retry.stdout + retry.stderr
    done = tree.wait_state(second.id, ("done", "failed"), 180)
    assert done.state == "done", done.error
    resumed = [e for e in tree.events("run.resumed") if e["run_id"] == second.id]
    assert resumed and resumed[0]["step"] >= 5
    assert (tree.root / "out" / "birds" / "latest").resolve() == second_dir.resolve()
    assert tree.notify.drain() and any(m.startswith("STATUS=") for m in tree.notify.messages)
    tree.signal(signal.SIGTERM)
    assert tree.wait_exit(60) == 0


@pytest.mark.slow
def test_slow_copy_settles_and_bad_dataset_does_not_block_others(make_tree) -> None:
    """(a) clips copied slowly in chunks are not picked up before they settle; (d) a bad
    clip gives a validation error for its dataset while another dataset trains."""
    tree: DaemonTree = make_tree(settle=1.0)
    make_dataset(tree.dataset("bad"), 2, "tiny_16k")
    (tree.dataset("bad") / "clip02.npz").write_bytes((tree.dataset("bad") / "clip00.npz").read_bytes())
    (tree.dataset("bad") / "clip02.wav").write_text("this is a text file, not audio\n")
    (tree.dataset("bad") / "clip03.npz").write_bytes(b"PK\x03\x04 corrupt")
    (tree.dataset("bad") / "clip03.wav").write_bytes((tree.dataset("bad") / "clip00.wav").read_bytes())
    tree.dataset("good").mkdir()
    make_dataset(tree.root / "staging", 3, "tiny_16k", seed=1)
    tree.write_job("good", "good")
    tree.write_job("bad", "bad")
    tree.start()
    tree.wait_for(lambda: len(tree.events("job.loaded")) == 2, 30, "both jobs loaded")

    names = sorted(p.name for p in (tree.root / "staging").iterdir())
    for name in names:
        copy_slowly(tree.root / "staging", tree.dataset("good"), chunk=128 * 1024, pause=0.1,
                    names=[name])
        assert _train_runs(tree, "good") == [] and tree.runs(job="extract-good") == []
        assert not [e for e in tree.events("dataset.changed") if e["dataset"] == "good"]
    copied = time.time()

    changed = tree.wait_for(lambda: [e for e in tree.events("dataset.changed")
                                     if e["dataset"] == "good"], 30, "the dataset event")
    assert len(changed) == 1 and sorted(changed[0]["files"]) == names  # one coalesced event
    assert _ts(changed[0]) >= copied + 0.5  # only after settle_seconds of quiet
    run = tree.wait_for(lambda: _train_runs(tree, "good"), 30, "the good run")[0]
    assert run.manifest_hash and len(run.manifest["files"]) == len(names)

    invalid = [e for e in tree.events("dataset.invalid") if e["dataset"] == "bad"]
    assert invalid, tree.log_tail()
    errors = " ".join(invalid[0]["errors"])
    assert "clip02.wav" in errors and "clip03.npz" in errors
    assert tree.runs(job="bad") == [] and tree.runs(job="extract-bad") == []
    done = tree.wait_state(run.id, ("done", "failed"), 180)
    assert done.state == "done", done.error
    assert tree.runs(job="bad") == []


@pytest.mark.slow
def test_sighup_reloads_and_sigterm_leaves_checkpoint_and_queued_run(tree: DaemonTree) -> None:
    """(g) SIGHUP: RELOADING=1 (+MONOTONIC_USEC) then READY=1, the run goes on;
    (f) SIGTERM: STOPPING=1, a checkpoint of the current step, the run back in `queued`."""
    tree.add_clips("birds", 3)
    tree.write_job("birds", "birds", steps=400, save_every=100)
    tree.start(notify=True)
    assert tree.notify is not None
    run = tree.wait_for(lambda: _train_runs(tree, "birds"), 30, "a training run")[0]
    tree.wait_for(lambda: (r := tree.queue.get(run.id)) and r.state == "training"
                  and (r.step or 0) >= 5, 120, "training")
    before = len(tree.notify.drain())
    pid = tree.queue.get(run.id).pid
    step_at_reload = tree.queue.get(run.id).step
    tree.signal(signal.SIGHUP)

    def reloaded() -> bool:
        new = tree.notify.drain()[before:]
        reload_i = [i for i, m in enumerate(new) if "RELOADING=1" in m]
        return bool(reload_i) and any("READY=1" in m for m in new[reload_i[0] + 1:])

    tree.wait_for(reloaded, 30, "RELOADING=1 then READY=1")
    reloading = [m for m in tree.notify.messages[before:] if "RELOADING=1" in m][0]
    assert "MONOTONIC_USEC=" in reloading
    assert tree.events("daemon.reloaded")[-1]["running"] == [run.id]  # every slot's run
    tree.wait_for(lambda: (tree.queue.get(run.id).step or 0) > step_at_reload, 60,
                  "training to go on after the reload")
    after = tree.queue.get(run.id)
    assert after.state == "training" and after.pid == pid

    tree.signal(signal.SIGTERM)
    assert tree.wait_exit(90) == 0
    assert any("STOPPING=1" in m for m in tree.notify.drain())
    stopped = tree.queue.get(run.id)
    assert stopped.state == "queued"
    interrupted = [e for e in tree.events("run.interrupted") if e["run_id"] == run.id]
    assert interrupted and interrupted[-1]["step"] > 0
    run_dir = tree.root / "out" / "birds" / run.id
    assert interrupted[-1]["step"] in _ckpt_steps(run_dir)
    assert not (run_dir / "adapter_final.pt").exists()


def test_kill9_then_restart_resumes_from_last_checkpoint(tree: DaemonTree) -> None:
    """(e) kill -9 of the daemon while training; a restart resumes the same run from its
    newest checkpoint and finishes with no progress step lost."""
    tree.add_clips("birds", 3)
    tree.write_job("birds", "birds", steps=40, save_every=10)
    tree.start()
    run = tree.wait_for(lambda: _train_runs(tree, "birds"), 30, "a training run")[0]
    run_dir = tree.root / "out" / "birds" / run.id
    tree.wait_for(lambda: (run_dir / "adapter_step00010.pt").exists(), 120, "a checkpoint")
    assert tree.proc is not None
    tree.proc.kill()  # SIGKILL: no clean-up at all in the daemon
    tree.proc.wait(scaled(10))
    assert tree.queue.get(run.id).state in ("extracting", "training")

    tree.start()
    done = tree.wait_state(run.id, ("done", "failed"), 420)  # generous: CI may be loaded
    assert done.state == "done", done.error
    assert done.attempts == 2 and len(_train_runs(tree, "birds")) == 1  # the same run
    resumed = [e for e in tree.events("run.resumed") if e["run_id"] == run.id]
    assert len(resumed) == 1 and resumed[0]["step"] >= 10
    assert resumed[0]["checkpoint"].endswith(f"adapter_step{resumed[0]['step']:05d}.pt")
    requeued = [e for e in tree.events("run.state")
                if e.get("run_id") == run.id and e.get("state") == "queued"
                and "interrupted" in e.get("reason", "")]
    assert requeued
    steps = _progress_steps(run_dir)
    assert set(range(5, 41, 5)) <= set(steps), steps  # nothing lost...
    assert steps == sorted(set(steps)), steps  # ...and nothing trained twice
    assert missing_outputs(run_dir) == []
    tree.signal(signal.SIGTERM)
    assert tree.wait_exit(60) == 0


@pytest.mark.slow
def test_demo_runs_to_completion(tmp_path: Path) -> None:
    """(j) `selvad demo DIR --steps N` trains with the real daemon and exits 0."""
    demo = tmp_path / "demo"
    try:
        proc = subprocess.run([sys.executable, "-m", "selvad.cli", "demo", str(demo),
                               "--steps", "20"], capture_output=True, text=True, cwd=REPO,
                              timeout=scaled(300))
    finally:
        for pid_file in (demo / "state" / "runs").glob("*/child.pid"):
            pid_file.unlink(missing_ok=True)  # children stop with the daemon (pdeathsig)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "validation: valid" in proc.stdout and "training: [" in proc.stdout
    assert "adapter_final.pt" in proc.stdout
    link = next(w for w in proc.stdout.split() if "?token=" in w)  # the page's link, token in
    assert link.startswith("http://127.0.0.1:") and "`selvad web-url` prints it" in proc.stdout
    assert 'format = "json"' not in (demo / "selvad.toml").read_text()  # auto: readable
    finals = list((demo / "output" / "demo").glob("2*/adapter_final.pt"))
    assert len(finals) == 1
    # the closing lines: the daemon has stopped, how to run it again (this venv's selvad,
    # the demo's config), why the tiny model's samples are noise, and the recommendation
    assert "The daemon has stopped" in proc.stdout and "noise by design" in proc.stdout
    again = [ln.strip().split("  #")[0].strip() for ln in proc.stdout.splitlines()
             if ln.strip().endswith("# then, in another terminal:")][0]
    assert again.split()[0] in (str(Path(sys.executable).with_name("selvad")), sys.executable)
    assert again.endswith(f"run --config {demo / 'selvad.toml'}")
    assert "recommended: " in proc.stdout
    assert f"web-url --config {demo / 'selvad.toml'}" in proc.stdout  # the page, later
    assert f"drop a video into {demo / 'render' / 'demo'}" in proc.stdout and (demo / "render" / "demo").is_dir()
    status = subprocess.run([*again.replace(" run ", " status ").split()], capture_output=True,
                            text=True, timeout=scaled(60))  # the pasted command works
    assert status.returncode == 0 and "done" in status.stdout, status.stdout + status.stderr
