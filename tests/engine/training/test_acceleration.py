"""The speed options of a run: activation checkpointing (same losses as the plain step over
a 50-step bf16 run) and torch.compile (a compile event when it works, a warning and the
same run without it when it fails)."""

from __future__ import annotations

import pytest
import torch

from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import train


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_clips):
    return make_clips(tmp_path_factory.mktemp("data"), 4)


def run(data, out, weights, **kw) -> tuple[dict[int, float], list[dict]]:
    base = dict(data_dir=str(data), output_dir=str(out), variant="tiny_16k", selva_dir=str(weights),
                steps=4, save_every=4, log_every=1, batch_size=2, lr=1e-3, warmup_steps=2,
                sample_steps=2, precision="fp32", device="cpu", cache_dir=str(out.parent / "cache"))
    events: list[dict] = []
    result = train(TrainConfig(**{**base, **kw}), events=events.append)
    assert result.status == "done"
    return {e["step"]: e["loss"] for e in events if e["event"] == "progress"}, events


@pytest.mark.slow
def test_50_step_bf16_run_with_checkpointing_matches_the_plain_step(tmp_path, dataset, tiny_weights):
    # bf16 where the CPU has it (as train() resolves it), else fp32
    kw = dict(steps=50, save_every=50, log_every=1, precision="bf16", lr=2e-3)
    plain, _ = run(dataset, tmp_path / "plain", tiny_weights, **kw)
    ckpt, _ = run(dataset, tmp_path / "ckpt", tiny_weights, gradient_checkpointing=True, **kw)
    assert sorted(plain) == sorted(ckpt) == list(range(1, 51))
    # recomputation replays the same ops: equal up to bf16 rounding, step by step
    assert [ckpt[s] for s in plain] == pytest.approx([plain[s] for s in plain], rel=2e-2, abs=1e-3)
    assert sum(plain[s] for s in range(41, 51)) < sum(plain[s] for s in range(1, 11))  # it learns


@pytest.mark.slow  # two short train() runs: ~30 s each on a loaded 2-core machine
def test_compile_failure_warns_and_trains_the_same_run_eagerly(tmp_path, dataset, tiny_weights, monkeypatch):
    plain, _ = run(dataset, tmp_path / "plain", tiny_weights)

    def broken_compile(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("InductorError: no working C++ compiler\nmore detail")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    compiled, events = run(dataset, tmp_path / "compiled", tiny_weights, compile=True)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("torch.compile failed (RuntimeError: InductorError: no working C++ compiler)" in w
               and "compile = false" in w for w in warnings), warnings
    assert not any(e["event"] == "compile" for e in events)
    assert compiled == plain  # the same draws and numbers as a run without compile


@pytest.mark.slow
def test_compile_reports_its_time_and_keeps_the_numbers(tmp_path, dataset, tiny_weights, monkeypatch):
    plain, _ = run(dataset, tmp_path / "plain", tiny_weights)
    compiled_calls = []

    def tracing_compile(fn, *args, **kwargs):  # stands in for the compiler: runs fn as it is
        def call(*a, **k):
            compiled_calls.append(1)
            return fn(*a, **k)
        return call

    monkeypatch.setattr(torch, "compile", tracing_compile)
    compiled, events = run(dataset, tmp_path / "compiled", tiny_weights, compile=True)
    (event,) = [e for e in events if e["event"] == "compile"]
    assert event["blocks"] == 3 and event["seconds"] >= 0
    assert compiled_calls and compiled == pytest.approx(plain, abs=1e-6)
