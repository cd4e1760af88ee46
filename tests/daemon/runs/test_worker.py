"""The worker: run directories, run.toml, the `latest` link, and RunProcess with a fake child
that speaks the engine's JSON-lines protocol (no model, no torch: fast)."""

from __future__ import annotations

import json
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from selva_engine.training.options import TrainConfig
from selvad.config.daemon import DaemonConfig, load_config
from selvad.runs.child import stop_orphan
from selvad.runs.queue import Run, RunQueue
from selvad.runs.rundir import (
    child_device,
    prune_job_runs,
    run_config,
    run_dir_for,
    update_latest,
    write_run_toml,
)
from selvad.runs.worker import RunProcess, describe_exit, last_exception_line, one_line

FAKE_CHILD = r'''
import json, signal, sys, time
from pathlib import Path
mode, out = sys.argv[1], Path(sys.argv[2])
stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
def emit(**event):
    print(json.dumps(event), flush=True)
print("not json: a stray line", flush=True)
emit(event="extract_start", clips=3)
emit(event="train_start", step=0, steps=10, device="cpu")
if mode == "done":
    for s in (1, 2, 3):
        (out / f"adapter_step{s:05d}.pt").write_bytes(b"x")
    (out / "adapter_final.pt").write_bytes(b"x")
    for s in (5, 10):
        emit(event="progress", step=s, steps=10, loss=1.0 / s, smoothed_loss=0.5, lr=1e-4,
             grad_norm=0.1, samples_per_s=4.0, eta_s=10.0 - s)
    emit(event="done", step=10, adapter=str(out / "adapter_final.pt"), best=None)
    sys.exit(0)
if mode == "error":
    emit(event="error", error="TrainError", message="/data: no usable clips")
    sys.exit(2)
if mode == "crash":
    print('Traceback (most recent call last):\n  File "x.py", line 3, in <module>\n    '
          'step()\n    ^^^^^^\nRuntimeError: CUDA out of memory', file=sys.stderr)
    sys.exit(1)
while not stop:
    time.sleep(0.02)
emit(event="interrupted", step=3, checkpoint=str(out / "adapter_step00003.pt"))
sys.exit(3)
'''


@pytest.fixture
def cfg(make_config: Callable[[str], Path], tmp_path: Path) -> DaemonConfig:
    (tmp_path / "datasets" / "birds").mkdir(parents=True, exist_ok=True)
    return load_config(make_config('[retention]\nkeep_last_checkpoints = 1\nkeep_spread = false\n'))


@pytest.fixture
def queue(cfg: DaemonConfig) -> RunQueue:
    return RunQueue(cfg.paths.queue_path)


def _claimed(queue: RunQueue, cfg: DaemonConfig, kind: str = "train") -> Run:
    tc = TrainConfig(data_dir=str(cfg.paths.dataset_roots[0] / "birds"), variant="tiny_16k",
                     steps=10)
    run = queue.enqueue("birds", "birds", tc.to_dict(), {"files": []}, kind=kind)
    assert run is not None
    claimed = queue.claim(run.id)
    assert claimed is not None
    return claimed


def _fake(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str) -> None:
    script = tmp_path / "fake_child.py"
    script.write_text(FAKE_CHILD)

    def command(self: RunProcess) -> list[str]:
        return [sys.executable, str(script), mode, str(self.out_dir)]

    monkeypatch.setattr(RunProcess, "_command", command)


def _run(queue: RunQueue, cfg: DaemonConfig, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
         mode: str, kind: str = "train") -> tuple[RunProcess, Run]:
    _fake(monkeypatch, tmp_path, mode)
    proc = RunProcess(_claimed(queue, cfg, kind), queue, cfg)
    proc.start()
    return proc, proc.run


def test_child_device_maps_an_indexed_gpu_to_cuda_visible_devices() -> None:
    assert child_device("cuda:1") == ("cuda", {"CUDA_VISIBLE_DEVICES": "1"})
    assert child_device("cpu") == ("cpu", {})
    assert child_device("auto") == ("auto", {})


def test_run_config_takes_daemon_owned_fields_from_the_config(cfg: DaemonConfig,
                                                              queue: RunQueue) -> None:
    run = _claimed(queue, cfg)
    tc = run_config(run, cfg, Path("/out/x"))
    assert tc.output_dir == "/out/x" and tc.resume == "latest"
    assert tc.cache_dir == str(cfg.paths.effective_cache_dir) and tc.steps == 10


def test_run_toml_is_valid_toml_with_auto_for_none(tmp_path: Path, cfg: DaemonConfig,
                                                   queue: RunQueue) -> None:
    run = _claimed(queue, cfg)
    path = write_run_toml(tmp_path / "r" / "run.toml", run, TrainConfig(variant="tiny_16k"))
    doc = tomllib.loads(path.read_text())
    assert doc["run"]["id"] == run.id and doc["config"]["alpha"] == "auto"
    assert doc["config"]["val_clips"] == "auto" and doc["config"]["target"] == ["attn.qkv"]
    manifest = {"files": [{"name": n, "size": 3, "mtime_ns": 1, "sha256": n * 2}
                          for n in ("a.npz", "a.wav", "prompts.txt")]}
    run = queue.enqueue("birds", "birds", run.config, manifest)
    doc = tomllib.loads(write_run_toml(tmp_path / "m" / "run.toml", run,
                                       TrainConfig(variant="tiny_16k")).read_text())
    assert doc["files"] == [{"name": f["name"], "size": 3, "sha256": f["sha256"]}
                            for f in manifest["files"]]  # exactly the files trained
    assert doc["run"]["files"] == 3


def test_latest_link_is_replaced_atomically(tmp_path: Path) -> None:
    update_latest(tmp_path, "run-a")
    update_latest(tmp_path, "run-b")
    assert os.readlink(tmp_path / "latest") == "run-b"
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]


def test_describe_exit_names_signals() -> None:
    assert "SIGKILL" in describe_exit(-9) and "out of memory" in describe_exit(-9)
    assert "status 1" in describe_exit(1)
    assert describe_exit(1, "extract") == "the extraction process exited with status 1"


def test_done_run_stores_progress_state_and_prunes(cfg: DaemonConfig, queue: RunQueue,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    proc, run = _run(queue, cfg, monkeypatch, tmp_path, "done")
    outcome = proc.wait(30)
    assert outcome is not None and outcome.state == "done"
    row = queue.get(run.id)
    assert row.state == "done" and row.step == 10 and row.total_steps == 10
    assert row.device == "auto: cpu"  # the one "auto" slot names the device the child chose
    assert row.loss == pytest.approx(0.5) and row.eta_s == 0.0  # the smoothed loss and row.samples_per_s == 4.0
    out = run_dir_for(cfg, run)
    assert row.output_dir == str(out)
    assert sorted(p.name for p in out.glob("adapter_*")) == ["adapter_final.pt",
                                                            "adapter_step00003.pt"]
    assert os.readlink(out.parent / "latest") == run.id
    assert (out / "worker.log").exists() and proc.poll() == outcome


def test_error_event_fails_the_run_with_its_message(cfg: DaemonConfig, queue: RunQueue,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    proc, run = _run(queue, cfg, monkeypatch, tmp_path, "error")
    assert proc.wait(30).state == "failed"
    log = run_dir_for(cfg, run) / "worker.log"
    assert queue.get(run.id).error == f"/data: no usable clips; the full log is {log}"


def test_crash_fails_the_run_with_one_sentence_and_the_log_path(
        cfg: DaemonConfig, queue: RunQueue, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    proc, run = _run(queue, cfg, monkeypatch, tmp_path, "crash")
    assert proc.wait(30).state == "failed"
    error = queue.get(run.id).error
    log = run_dir_for(cfg, run) / "worker.log"
    assert error == ("the training process exited with status 1 (RuntimeError: CUDA out of "
                     f"memory); the full log is {log}")
    assert "\n" not in error and "^^^" not in error and "Traceback" not in error
    assert "Traceback (most recent call last)" in log.read_text()  # the details stay in the log


def test_failed_extraction_run_says_extraction(cfg: DaemonConfig, queue: RunQueue,
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    proc, run = _run(queue, cfg, monkeypatch, tmp_path, "crash", kind="extract")
    assert proc.wait(30).state == "failed"
    error = queue.get(run.id).error
    assert error.startswith("the extraction process exited with status 1 (RuntimeError: ")
    assert "training" not in error


def test_one_line_and_last_exception_line() -> None:
    assert one_line("variant 'x' cannot run:\n  - generator: missing\nfix: download") == \
        "variant 'x' cannot run: - generator: missing fix: download"
    assert len(one_line("x" * 1000)) == 300
    tail = ["Traceback (most recent call last):", '  File "a.py", line 1, in <module>',
            "    torchaudio.functional.resample(x)", "    ^^^^^^^^",
            "OSError: libtorchaudio.so: undefined symbol: torch_exception_get_what", ""]
    assert last_exception_line(tail) == ("OSError: libtorchaudio.so: undefined symbol: "
                                         "torch_exception_get_what")
    assert last_exception_line(["    ^^^^^^^^", "warning: x"]) is None


def _wait_training(queue: RunQueue, run: Run) -> None:
    deadline = time.monotonic() + 30
    while queue.get(run.id).state != "training" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert queue.get(run.id).state == "training"


def test_cancel_ends_cancelled_and_interrupt_ends_queued(cfg: DaemonConfig, queue: RunQueue,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    proc, run = _run(queue, cfg, monkeypatch, tmp_path, "wait")
    _wait_training(queue, run)
    proc.cancel()
    assert proc.wait(30).state == "cancelled"
    assert queue.get(run.id).state == "cancelled"
    queue.set_state(run.id, "queued")
    again = RunProcess(queue.claim(run.id), queue, cfg)
    again.start()
    _wait_training(queue, run)
    again.interrupt()
    assert again.wait(30).state == "queued"
    row = queue.get(run.id)
    assert row.state == "queued" and row.attempts == 2


def test_extract_run_logs_under_the_state_dir(cfg: DaemonConfig, queue: RunQueue,
                                             monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    proc, run = _run(queue, cfg, monkeypatch, tmp_path, "done", kind="extract")
    assert proc.wait(30).state == "done"
    assert (cfg.paths.state_dir / "runs" / run.id / "worker.log").exists()
    assert not (cfg.paths.output_root / "birds").exists()


def test_prune_job_runs_never_touches_unfinished_runs(cfg: DaemonConfig) -> None:
    job_dir = cfg.paths.output_root / "birds"
    for name in ("20260101-000000-aaaa", "20260102-000000-bbbb", "20260103-000000-cccc"):
        (job_dir / name).mkdir(parents=True)
    removed = prune_job_runs(cfg, "birds", {"20260101-000000-aaaa", "20260103-000000-cccc"}, 1)
    assert [p.name for p in removed] == ["20260101-000000-aaaa"]
    assert sorted(p.name for p in job_dir.iterdir()) == ["20260102-000000-bbbb",
                                                         "20260103-000000-cccc"]


def test_stop_orphan_ignores_missing_or_foreign_pids(cfg: DaemonConfig, queue: RunQueue) -> None:
    run = _claimed(queue, cfg)
    assert stop_orphan(cfg, run) is None
    pid_file = cfg.paths.state_dir / "runs" / run.id / "child.pid"
    pid_file.parent.mkdir(parents=True)
    pid_file.write_text(f"{os.getpid()}\n")  # alive, but not a selvad child
    assert stop_orphan(cfg, run) is None and not pid_file.exists()



def test_run_toml_records_the_prepare_steps_applied(tmp_path: Path, cfg: DaemonConfig,
                                                    queue: RunQueue) -> None:
    run = _claimed(queue, cfg)
    data = cfg.paths.dataset_roots[0] / "birds"
    (data / "dataset.toml").write_text("[prepare]\nloudness = true\ntarget_lufs = -18\nhf_smooth = true\n")
    try:
        tc = TrainConfig(variant="tiny_16k", data_dir=str(data), prepare_hf_smooth=False, prepare_true_peak_dbtp=-2.0)
        doc = tomllib.loads(write_run_toml(tmp_path / "p" / "run.toml", run, tc).read_text())
        # dataset.toml's steps, the job's values over them (hf_smooth off, its ceiling)
        assert doc["prepare"] == {"steps": ["loudness"],
                                  "loudness": {"target_lufs": -18.0, "true_peak_dbtp": -2.0}}
        plain = tomllib.loads(write_run_toml(tmp_path / "q" / "run.toml", run,
                                             TrainConfig(variant="tiny_16k")).read_text())
        assert plain["prepare"] == {"steps": []}
    finally:
        (data / "dataset.toml").unlink()


def test_run_toml_records_the_augment_applied(tmp_path: Path, cfg: DaemonConfig, queue: RunQueue) -> None:
    run = _claimed(queue, cfg)
    data = cfg.paths.dataset_roots[0] / "birds"
    (data / "dataset.toml").write_text("[augment]\nenabled = true\nvariants = 3\n")
    try:
        tc = TrainConfig(variant="tiny_16k", data_dir=str(data), augment_keep_originals=False)
        doc = tomllib.loads(write_run_toml(tmp_path / "p" / "run.toml", run, tc).read_text())
        assert doc["augment"] == {"enabled": True, "variants": 3, "gain_db": 3.0, "pitch_semitones": 0.0,
                                  "stretch": 0.0, "seed": 42, "keep_originals": False}
        plain = tomllib.loads(write_run_toml(tmp_path / "q" / "run.toml", run,
                                             TrainConfig(variant="tiny_16k")).read_text())
        assert plain["augment"] == {"enabled": False}
    finally:
        (data / "dataset.toml").unlink()


def test_extract_child_gets_the_jobs_prepare_values(cfg: DaemonConfig, queue: RunQueue) -> None:
    tc = TrainConfig(data_dir=str(cfg.paths.dataset_roots[0] / "birds"), variant="tiny_16k",
                     prepare_loudness=True, prepare_target_lufs=-20.0)
    run = queue.enqueue("birds", "birds", tc.to_dict(), {"files": []}, kind="extract")
    assert run is not None
    cmd = RunProcess(queue.claim(run.id), queue, cfg)._command()
    assert json.loads(cmd[cmd.index("--prepare") + 1]) == {"loudness": True, "target_lufs": -20.0}
