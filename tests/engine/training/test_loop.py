"""Loop pieces without a model: sampler, LR schedule, overfitting rule, split, precision."""

from __future__ import annotations

import pytest
import torch

from selva_engine.training.loop import (
    BatchSampler,
    TrainError,
    effective_precision,
    lr_factor,
    overfitting,
    split_clips,
)
from selva_engine.training.options import TrainConfig


def test_sampler_draws_without_replacement_per_epoch_and_resumes():
    s = BatchSampler(list(range(10)), 4, seed=1)
    first = [s.next_batch() for _ in range(5)]  # 20 draws = 2 epochs
    flat = [i for b in first for i in b]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    state = s.state_dict()
    expected = [s.next_batch() for _ in range(3)]
    t = BatchSampler(list(range(10)), 4, seed=99)
    t.load_state_dict(state)
    assert [t.next_batch() for _ in range(3)] == expected


def test_lr_schedule_warmup_constant_cosine():
    cfg = TrainConfig(lr=1e-4, steps=100, warmup_steps=10)
    assert lr_factor(0, cfg) == 0.0 and lr_factor(5, cfg) == 0.5 and lr_factor(50, cfg) == 1.0
    cos = TrainConfig(lr=1e-4, steps=100, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(10, cos) == pytest.approx(1.0)
    assert lr_factor(55, cos) == pytest.approx(0.5)
    assert lr_factor(100, cos) == pytest.approx(1e-6 / 1e-4)  # floor
    accum = TrainConfig(lr=1e-4, steps=100, warmup_steps=0, lr_schedule="cosine", grad_accum=4)
    assert lr_factor(25, accum) == pytest.approx(1e-6 / 1e-4)  # 25 optimizer steps in all


def test_overfitting_rule():
    assert overfitting([1.0, 1.1, 1.2, 1.3], [2.0, 1.9, 1.8, 1.7], 3)
    assert not overfitting([1.0, 1.1, 1.05, 1.3], [2.0, 1.9, 1.8, 1.7], 3)
    assert not overfitting([1.0, 1.1, 1.2, 1.3], [2.0, 1.9, 2.0, 1.7], 3)
    assert not overfitting([float("nan")] * 4, [2.0, 1.9, 1.8, 1.7], 3)
    assert not overfitting([1.0, 1.1], [2.0, 1.9], 3)


def test_split_and_precision_fallbacks():
    train, val = split_clips(list(range(8)), None, seed=42)
    assert len(val) == 1 and sorted(train + val) == list(range(8))
    assert split_clips(list(range(8)), None, seed=42) == (train, val)
    assert split_clips(list(range(7)), None, seed=42)[1] == []
    with pytest.raises(TrainError, match="val_clips"):
        split_clips(list(range(3)), 3, seed=0)


@pytest.mark.parametrize("native", [False, True])
def test_precision_fallbacks_follow_cpu_bf16_support(monkeypatch, native):
    import selva_engine.training.loop as trainloop

    monkeypatch.setattr(trainloop, "cpu_has_native_bf16", lambda: native)
    warnings = []
    cpu = torch.device("cpu")
    assert effective_precision("bf16", cpu, warnings.append) == ("bf16" if native else "fp32")
    assert effective_precision("fp16", cpu, warnings.append) == "fp32"
    assert effective_precision("fp32", cpu, warnings.append) == "fp32"
    assert "fp16 needs a CUDA GPU" in warnings[-1]
    if native:
        assert len(warnings) == 1
    else:
        assert len(warnings) == 2 and "bf16 has no hardware support" in warnings[0]


def test_cpu_bf16_probe_answers_a_bool():
    from selva_engine.training.loop import cpu_has_native_bf16

    assert isinstance(cpu_has_native_bf16(), bool)
