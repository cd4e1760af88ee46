"""Trainer on the tiny variant: outputs, learning, resume equality, stop, cache, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from selva_engine.errors import EmptyDatasetError
from selva_engine.model.lora import NoTargetsError, load_adapter
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import TrainError, train
from selva_engine.weights.locate import MissingWeightsError

REPO = Path(__file__).resolve().parents[3]


def config(data: Path, out: Path, weights: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), output_dir=str(out), variant="tiny_16k", selva_dir=str(weights),
                steps=12, save_every=6, log_every=2, batch_size=2, lr=1e-3, warmup_steps=2,
                sample_steps=2, precision="fp32", device="cpu", cache_dir=str(out.parent / "cache"))
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_clips):
    return make_clips(tmp_path_factory.mktemp("data"), 4)


def test_outputs_and_learning(tmp_path, dataset, tiny_weights):
    events = []
    cfg = config(dataset, tmp_path / "run", tiny_weights, steps=80, save_every=40, log_every=10,
                 batch_size=4, lr=2e-3, warmup_steps=5)
    result = train(cfg, events=events.append)
    out = tmp_path / "run"
    assert result.status == "done" and result.step == 80
    for name in ("adapter_step00040.pt", "adapter_step00080.pt", "adapter_final.pt", "meta.json",
                 "sample_step00040.wav", "sample_step00080.wav", "loss_raw.png", "loss_smoothed.png",
                 "progress.jsonl", "sample_step00040.png", "sample_step00080.png",
                 "sample_reference.png"):  # each sample's spectrogram beside it
        assert (out / name).is_file(), name
    assert not (out / "loss_validation.png").exists()  # 4 clips: no held-out clip, no plot
    final = torch.load(out / "adapter_final.pt", weights_only=True)
    assert set(final) == {"state_dict", "meta"}
    assert final["meta"]["variant"] == "tiny_16k" and final["meta"]["rank"] == 16
    assert len(final["state_dict"]) == 14  # 7 qkv layers x (A, B)
    step_ckpt = torch.load(out / "adapter_step00040.pt", weights_only=True)
    assert {"state_dict", "meta", "optimizer", "scheduler", "step", "rng"} <= set(step_ckpt)
    assert step_ckpt["step"] == 40
    records = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    lines = [x for x in records if x["event"] == "progress"]
    assert [x["step"] for x in lines] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert [x["step"] for x in records if x["event"] == "checkpoint"] == [40, 80]
    assert (out / "metrics.png").is_file()
    assert {"loss", "smoothed_loss", "lr", "grad_norm", "samples_per_s", "eta_s"} <= set(lines[0])
    losses = [x["loss"] for x in lines]
    assert np.mean(losses[-2:]) < 0.8 * np.mean(losses[:2])  # it learns the tones
    ref, sr = sf.read(out / "sample_reference.wav")  # the clip's own audio, to listen against
    assert sr == 16000 and len(ref) == 128000 and 0.02 < np.sqrt(np.mean(ref**2)) < 0.08
    wave, sr = sf.read(out / "sample_step00080.wav")
    assert sr == 16000 and len(wave) == 128000
    rms = np.sqrt(np.mean(wave**2))
    assert 0.02 < rms < 0.08  # loudness-normalised to -27 dBFS
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 80 and meta["checkpoints"] == ["adapter_step00040.pt", "adapter_step00080.pt"]
    assert "hf_energy_ratio" in meta["metrics"]["80"]
    ckpts = [e for e in events if e["event"] == "checkpoint"]
    assert ckpts[-1]["train_fixed_loss"] < ckpts[0]["train_fixed_loss"] * 1.05


def _run(cfg, stop_at=None):
    stop = threading.Event()
    losses = {}

    def on_event(e):
        if e["event"] == "progress":
            losses[e["step"]] = e["loss"]
            if stop_at is not None and e["step"] >= stop_at:
                stop.set()

    result = train(cfg, events=on_event, stop=stop, install_signal_handlers=False)
    return result, losses


def test_resume_equals_uninterrupted_run(tmp_path, dataset, tiny_weights):
    full, full_losses = _run(config(dataset, tmp_path / "full", tiny_weights, log_every=1))
    part = config(dataset, tmp_path / "part", tiny_weights, log_every=1)
    first, first_losses = _run(part, stop_at=5)
    assert first.status == "interrupted" and first.step == 5
    assert (tmp_path / "part" / "adapter_step00005.pt").is_file()
    assert not (tmp_path / "part" / "adapter_final.pt").exists()
    second, second_losses = _run(config(dataset, tmp_path / "part", tiny_weights, log_every=1, resume="latest"))
    assert second.status == "done"
    assert {**first_losses, **second_losses} == pytest.approx(full_losses, abs=1e-6)
    a = load_adapter(tmp_path / "full" / "adapter_final.pt").state_dict
    b = load_adapter(tmp_path / "part" / "adapter_final.pt").state_dict
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    # the loss history (and so the plot axis) continues across the resume
    hist = torch.load(tmp_path / "part" / "adapter_step00012.pt", weights_only=True)["history"]
    assert hist["step"] == list(range(1, 13))


def test_second_run_on_same_clips_makes_no_encoder_call(tmp_path, dataset, tiny_weights):
    calls = {"codec": 0, "text": 0}

    def counting(kind):
        def factory():
            calls[kind] += 1
            raise AssertionError("encoder must not be loaded when everything is cached")
        return factory

    cfg = config(dataset, tmp_path / "a", tiny_weights, steps=2, save_every=2)
    first = []
    train(cfg, events=first.append)
    done = next(e for e in first if e["event"] == "extract_done")
    assert done["audio_encoded"] == 4 and done["text_encoded"] == 4
    events = []
    train(config(dataset, tmp_path / "b", tiny_weights, steps=2, save_every=2), events=events.append,
          codec_factory=counting("codec"), text_factory=counting("text"))
    done = next(e for e in events if e["event"] == "extract_done")
    assert done["audio_encoded"] == 0 and done["audio_cached"] == 4 and calls == {"codec": 0, "text": 0}


def test_validation_split_best_adapter(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data8", 8)
    cfg = config(data, tmp_path / "run", tiny_weights, steps=8, save_every=4, log_every=4)
    result = train(cfg)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["val_clips"] == 1 and meta["train_clips"] == 7 and len(meta["val_clip_stems"]) == 1
    assert meta["best"]["file"] == "adapter_best.pt" and result.best_adapter.is_file()
    assert load_adapter(result.best_adapter).meta["best_val_loss"] == pytest.approx(meta["best"]["val_loss"])


def test_errors_are_clear(tmp_path, dataset, tiny_weights):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EmptyDatasetError, match="no .npz files"):
        train(config(empty, tmp_path / "o1", tiny_weights))
    with pytest.raises(NoTargetsError, match="attn.nothing"):
        train(config(dataset, tmp_path / "o2", tiny_weights, target=("attn.nothing",)))
    with pytest.raises(MissingWeightsError, match="make-tiny|looked"):
        train(config(dataset, tmp_path / "o3", tmp_path / "no-weights"))
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    np.savez(orphan / "lonely.npz", clip_features=np.zeros((1, 64, 1024), np.float32),
             sync_features=np.zeros((1, 192, 768), np.float32))
    with pytest.raises(TrainError, match="no usable clips"):
        train(config(orphan, tmp_path / "o4", tiny_weights))
    with pytest.raises(TrainError, match="batch_size"):
        train(config(dataset, tmp_path / "o5", tiny_weights, batch_size=0))


def test_cli_sigterm_saves_checkpoint_and_exits_3(tmp_path, dataset, tiny_weights):
    out = tmp_path / "sig"
    cmd = [sys.executable, "-m", "selva_engine.cli", "train", "--data_dir", str(dataset),
           "--output_dir", str(out), "--variant", "tiny_16k", "--selva_dir", str(tiny_weights),
           "--steps", "100000", "--save_every", "100000", "--log_every", "1", "--sample_steps", "2",
           "--precision", "fp32", "--device", "cpu", "--cache_dir", str(tmp_path / "cache"), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if events[-1]["event"] == "progress" and events[-1]["step"] >= 3:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.communicate(timeout=120)[0]
    events += [json.loads(x) for x in rest.splitlines()]
    assert proc.returncode == 3
    stop = next(e for e in events if e["event"] == "interrupted")
    assert stop["signal"] == "SIGTERM" and Path(stop["checkpoint"]).is_file()
    assert torch.load(stop["checkpoint"], weights_only=True)["step"] == stop["step"]


def test_cli_flags_match_original(tmp_path):
    from selva_engine.cli import build_train_parser

    args = build_train_parser().parse_args(["--data_dir", "d"])
    assert (args.output_dir, args.variant, args.rank, args.alpha, args.target, args.lr, args.steps,
            args.warmup_steps, args.batch_size, args.grad_accum, args.save_every, args.resume,
            args.precision, args.seed) == ("lora_output", "large_44k", 16, None, ["attn.qkv"], 1e-4,
                                           2000, 100, 4, 1, 500, "", "bf16", 42)
    args = build_train_parser().parse_args(["--data_dir", "d", "--timestep_mode", "logit_normal",
                                            "--target", "attn.qkv", "linear1"])
    assert args.timestep_sampling == "logit_normal" and args.target == ["attn.qkv", "linear1"]


def test_stop_before_training_leaves_no_checkpoint(tmp_path, dataset, tiny_weights):
    stop = threading.Event()
    stop.set()  # e.g. SIGTERM while the clips are still being encoded
    events = []
    result = train(config(dataset, tmp_path / "early", tiny_weights, cache_dir=str(tmp_path / "c2")),
                   events=events.append, stop=stop, install_signal_handlers=False)
    assert result.status == "interrupted" and result.step == 0 and result.last_checkpoint is None
    assert events[-1]["event"] == "interrupted" and events[-1]["stage"] == "extraction"
    assert not list((tmp_path / "early").glob("adapter_*.pt"))


@pytest.mark.slow
def test_bf16_on_a_cpu_with_native_bf16(tmp_path, dataset, tiny_weights, monkeypatch):
    """Where the CPU computes bf16 natively the default precision stays bf16: autocast with
    the frozen weights stored in bf16 and fp32 LoRA weights, end to end. Checkpoints that
    fall between log intervals read the pending losses back themselves."""
    import selva_engine.training.loop as trainloop

    monkeypatch.setattr(trainloop, "cpu_has_native_bf16", lambda: True)
    events = []
    cfg = config(dataset, tmp_path / "run", tiny_weights, precision="bf16", steps=8, save_every=6,
                 log_every=4)
    result = train(cfg, events=events.append)
    assert result.status == "done"
    start = next(e for e in events if e["event"] == "train_start")
    assert start["precision"] == "bf16" and not [e for e in events if e["event"] == "warning"]
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [6, 8]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [4, 8]
    assert all(np.isfinite(e["loss"]) and np.isfinite(e["grad_norm"]) for e in progress)
    final = torch.load(tmp_path / "run" / "adapter_final.pt", weights_only=True)
    assert final["meta"]["precision"] == "bf16"
    assert all(t.dtype == torch.float32 for t in final["state_dict"].values())
    assert (tmp_path / "run" / "sample_step00008.wav").is_file()
