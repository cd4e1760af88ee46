"""A run's state through a step checkpoint file and back, without a generator."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import torch

from selva_engine.model.flow import FlowMatching
from selva_engine.model.lora import apply_lora, lora_parameters, lora_state_dict
from selva_engine.outputs.checkpoint import checkpoint_name, save_checkpoint
from selva_engine.training.loop import BatchSampler, FixedLossProbe, autocast_for, make_scheduler
from selva_engine.training.options import TrainConfig
from selva_engine.training.setup import find_resume, resume_run
from selva_engine.training.state import (
    EventLog,
    RunContext,
    RunState,
    TrainData,
    TrainParts,
    checkpoint_payload,
)


def make_parts(cfg: TrainConfig, seed: int) -> TrainParts:
    """A two-layer stand-in for the generator, with LoRA, AdamW and the run's RNGs."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    names = apply_lora(model, rank=2, targets=["0", "1"], generator=torch.Generator().manual_seed(seed))
    a, b = lora_parameters(model)
    optimizer = torch.optim.AdamW([{"params": a, "lr": cfg.lr}, {"params": b, "lr": cfg.lr}], lr=cfg.lr)
    fm = FlowMatching()
    return TrainParts(model=model, lora_layers=names, params=a + b, optimizer=optimizer,
                      scheduler=make_scheduler(optimizer, cfg), scaler=torch.amp.GradScaler("cpu", enabled=False),
                      autocast=autocast_for(torch.device("cpu"), "fp32"), conditions=None, fm=fm,
                      sampler=BatchSampler([0, 1, 2], 2, seed=seed), gen_t=torch.Generator().manual_seed(seed + 1),
                      gen_noise=torch.Generator().manual_seed(seed + 2), probe=FixedLossProbe(fm, seed),
                      runner=None)


def draws(parts: TrainParts) -> list:
    """The next numbers every random source of a run would give."""
    return [torch.rand(3), torch.rand(2, generator=parts.gen_t), torch.randn(2, generator=parts.gen_noise),
            parts.sampler.next_batch()]


def test_state_round_trips_through_a_checkpoint_file(tmp_path):
    cfg = TrainConfig(lr=1e-2, warmup_steps=0, output_dir=str(tmp_path), seed=3)
    events = []
    ctx = RunContext(cfg=cfg, out_dir=tmp_path, variant=None, weights=None, device=torch.device("cpu"),
                     precision="fp32", log=EventLog(events.append, tmp_path / "progress.jsonl"))
    clips = [SimpleNamespace(stem=s) for s in ("a", "b", "c", "d")]
    zeros = torch.zeros(4, 1, 1)
    data = TrainData(clips=clips, train_idx=[0, 1, 3], val_idx=[2], lat_mean=zeros, lat_std=zeros,
                     clip_f=zeros, sync_f=zeros, text_f=zeros, negative_text=None)
    parts = make_parts(cfg, seed=3)
    for _ in range(3):  # move weights, moments, schedule and every RNG off their start
        parts.model(torch.randn(5, 4)).square().sum().backward()
        parts.optimizer.step()
        parts.scheduler.step()
        draws(parts)
    state = RunState(step=7, best={"step": 6, "val_loss": 0.5, "file": "adapter_best.pt"})
    state.history["step"] += [2, 4, 6]
    state.add_checkpoint(6, 0.5, 0.25, {"hf_energy_ratio": 0.1})
    payload = checkpoint_payload(ctx, data, parts, state, lora_state_dict(parts.model), {"steps": 7})
    save_checkpoint(tmp_path / checkpoint_name(7), payload)
    expected = draws(parts)

    resume = find_resume(replace(cfg, resume="latest"), tmp_path)
    assert resume.checkpoint["split"] == {"train": ["a", "b", "d"], "val": ["c"]}
    other = make_parts(cfg, seed=99)
    restored = resume_run(ctx, other, resume)
    assert events[-1]["event"] == "resumed" and events[-1]["step"] == 7
    assert (restored.step, restored.best, restored.history) == (7, state.best, state.history)
    for key, value in lora_state_dict(parts.model).items():
        assert torch.equal(lora_state_dict(other.model)[key], value), key
    assert other.scheduler.state_dict() == parts.scheduler.state_dict()
    moments = [other.optimizer.state[p]["exp_avg"] for p in other.params]
    assert all(torch.equal(m, parts.optimizer.state[p]["exp_avg"]) for m, p in zip(moments, parts.params, strict=True))
    got = draws(other)
    assert all(torch.equal(g, e) for g, e in zip(got[:3], expected[:3], strict=True)) and got[3] == expected[3]
