"""The worker under stress, with fake children speaking the engine's JSON-lines protocol:
a locked queue database (the reader keeps draining, writes are retried), a silent child
(noted as stalled), a child killed by SIGKILL (retried later, then failed with the fix),
and a run start that never validates the dataset on the daemon's thread."""

from __future__ import annotations

import sqlite3
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from selva_engine.training.options import TrainConfig
from selvad.config.daemon import DaemonConfig, load_config
from selvad.demo import make_dataset
from selvad.runs import exits
from selvad.runs.queue import Run, RunQueue
from selvad.runs.rundir import run_dir_for
from selvad.runs.worker import RunProcess

FAKE_CHILD = r'''
import json, os, signal, sys, time
from pathlib import Path
mode, out = sys.argv[1], Path(sys.argv[2])
def emit(**event):
    print(json.dumps(event), flush=True)
emit(event="train_start", step=0, steps=5000, device="cpu")
if mode == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "flood":  # far more than a pipe holds (64 KiB), once the test says go
    while not (out / "go").exists():
        time.sleep(0.01)
    for s in range(1, 5001):
        emit(event="progress", step=s, steps=5000, loss=1.0 / s, smoothed_loss=0.5, lr=1e-4,
             grad_norm=0.1, samples_per_s=4.0, eta_s=5000.0 - s, pad="x" * 200)
    (out / "flooded").write_text("")
    emit(event="done", step=5000)
    sys.exit(0)
while True:  # silent: speaks once when the test writes "talk", else waits for a signal
    if (out / "talk").exists():
        (out / "talk").unlink()
        emit(event="progress", step=7, steps=5000, loss=0.5)
    time.sleep(0.02)
'''


@pytest.fixture
def cfg(make_config: Callable[[str], Path], tmp_path: Path) -> DaemonConfig:
    make_dataset(tmp_path / "datasets" / "birds", 3, "tiny_16k")
    return load_config(make_config(""))


@pytest.fixture
def queue(cfg: DaemonConfig) -> Iterator[RunQueue]:
    q = RunQueue(cfg.paths.queue_path, busy_timeout=0.2)  # a locked database fails fast
    yield q
    q.close()


def _claimed(queue: RunQueue, cfg: DaemonConfig) -> Run:
    tc = TrainConfig(data_dir=str(cfg.paths.dataset_roots[0] / "birds"), variant="tiny_16k",
                     steps=10)
    run = queue.enqueue("birds", "birds", tc.to_dict(), {"files": []})
    assert run is not None
    claimed = queue.claim(run.id)
    assert claimed is not None
    return claimed


def _start(queue: RunQueue, cfg: DaemonConfig, monkeypatch: pytest.MonkeyPatch,
           tmp_path: Path, mode: str, run: Run | None = None) -> RunProcess:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)
    monkeypatch.setattr(RunProcess, "_command",
                        lambda self: [sys.executable, str(script), mode, str(self.out_dir)])
    proc = RunProcess(run or _claimed(queue, cfg), queue, cfg)
    proc.start()
    return proc


def _until(what: Callable[[], object], timeout: float = 20, desc: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {desc}"
        time.sleep(0.02)


@contextmanager
def _write_locked(path: Path) -> Iterator[None]:
    """Another connection holds the queue database's write lock meanwhile."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_locked_database_never_stops_the_reader_or_blocks_the_child(
        cfg: DaemonConfig, queue: RunQueue, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    proc = _start(queue, cfg, monkeypatch, tmp_path, "flood")
    _until(lambda: queue.get(proc.run.id).state == "training", desc="training")
    with _write_locked(cfg.paths.queue_path):
        (proc.out_dir / "go").write_text("")
        # ~1.3 MB of progress lines: the child finishes only if they are read meanwhile
        _until(lambda: (proc.out_dir / "flooded").exists(), 20, "the child to write it all")
        assert proc.proc is not None and proc.proc.wait(10) == 0
        assert proc.poll() is None  # the final write waits for the database
        assert queue.get(proc.run.id).state == "training"  # (readers are not blocked)
    outcome = proc.wait(20)
    assert outcome is not None and outcome.state == "done"
    row = queue.get(proc.run.id)
    assert row.state == "done" and row.step == 5000 and row.eta_s == 0.0  # newest progress


def test_a_silent_child_is_noted_as_stalled_once_and_cleared_when_it_speaks(
        cfg: DaemonConfig, queue: RunQueue, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    proc = _start(queue, cfg, monkeypatch, tmp_path, "silent")
    try:
        _until(lambda: queue.get(proc.run.id).state == "training", desc="training")
        assert proc.check_stall() is False
        proc.stall_after = 0.2
        time.sleep(0.3)
        assert proc.check_stall() is True and proc.check_stall() is True
        _until(lambda: (queue.get(proc.run.id).error or "").startswith("stalled: no output"),
               desc="the stall note")
        assert "selvad cancel" in queue.get(proc.run.id).error
        (proc.out_dir / "talk").write_text("")
        _until(lambda: queue.get(proc.run.id).error is None, desc="the note to clear")
        assert proc.stalled is False and queue.get(proc.run.id).step == 7
        proc.cancel()
        assert proc.wait(20).state == "cancelled"
    finally:
        proc.kill()  # a failed assertion must not leave the silent child running


def test_sigkill_is_retried_later_then_fails_with_the_fix(
        cfg: DaemonConfig, queue: RunQueue, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    proc = _start(queue, cfg, monkeypatch, tmp_path, "kill")
    before = time.time()
    outcome = proc.wait(20)
    assert outcome is not None and outcome.state == "queued"
    row = queue.get(proc.run.id)
    assert row.state == "queued" and row.auto_retries == 1
    assert row.not_before == pytest.approx(before + 30, abs=5)
    assert "retrying automatically" in row.error and "automatic retry 1 of 2" in row.error
    assert queue.next_run() is None and queue.claim(row.id) is None  # not before its time
    assert queue.next_run(now=row.not_before + 1).id == row.id

    monkeypatch.setattr(exits, "KILL_RETRY_DELAYS", (0.0, 0.0))
    for _ in range(2):
        queue._conn().execute("UPDATE runs SET not_before=0 WHERE id=?", (row.id,))
        proc = _start(queue, cfg, monkeypatch, tmp_path, "kill", queue.claim(row.id))
        last = proc.wait(20)
    assert last is not None and last.state == "failed"
    row = queue.get(row.id)
    assert row.state == "failed" and row.auto_retries == 2 and row.attempts == 3
    assert "after 2 automatic retries" in row.error and "batch_size" in row.error
    queue.set_state(row.id, "queued")  # the user's retry starts a fresh retry budget
    assert queue.get(row.id).auto_retries == 0


def test_a_sigkill_the_daemon_sent_is_not_retried(
        cfg: DaemonConfig, queue: RunQueue, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    proc = _start(queue, cfg, monkeypatch, tmp_path, "stubborn")
    _until(lambda: queue.get(proc.run.id).state == "training", desc="training")
    proc.cancel()
    assert proc.wait(0.5) is None  # it ignores SIGTERM: the stop timeout kills it
    proc.kill()
    assert proc.wait(20).state == "cancelled"
    assert queue.get(proc.run.id).auto_retries == 0


def test_starting_a_run_never_validates_on_the_daemons_thread(
        cfg: DaemonConfig, queue: RunQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation of a large dataset took seconds on the main loop; the child does it."""
    import selvad.datasets.validate as validate

    real = validate.validate_dataset

    def slow(*args: object, **kwargs: object) -> object:  # a dataset of 2,500 clips
        time.sleep(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(validate, "validate_dataset", slow)
    proc = RunProcess(_claimed(queue, cfg), queue, cfg)
    began = time.monotonic()
    proc.start()  # the real trampoline: it validates, then fails for want of weights
    assert time.monotonic() - began < 2.0
    outcome = proc.wait(120)
    assert outcome is not None and outcome.state == "failed"
    report = tomllib.loads((run_dir_for(cfg, proc.run) / "validation.toml").read_text())
    assert report["ok"] is True
