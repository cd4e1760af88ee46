"""Flow matching: loss shape, Euler integration, CFG rule, timestep samplers."""

from __future__ import annotations

import math

import pytest
import torch

from selva_engine.model.flow import FlowMatching, sample_timesteps


def test_path_endpoints_and_loss_zero_at_target():
    fm = FlowMatching()
    x0, x1 = torch.randn(3, 10, 4), torch.randn(3, 10, 4)
    assert torch.allclose(fm.path(x0, x1, torch.zeros(3)), x0)
    assert torch.allclose(fm.path(x0, x1, torch.ones(3)), x1)
    assert fm.loss(x1 - x0, x0, x1).shape == (3,)
    assert torch.allclose(fm.loss(x1 - x0, x0, x1), torch.zeros(3))


def test_euler_integrates_exact_field():
    # dx/dt = x1 - x0 is constant along the straight path: Euler is exact.
    fm = FlowMatching(num_steps=7)
    x0, x1 = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    traj: list[torch.Tensor] = []
    out = fm.to_data(lambda t, x: x1 - x0, x0, trajectory=traj)
    assert torch.allclose(out, x1, atol=1e-5)
    assert len(traj) == 8


def test_timestep_samplers_are_reproducible_and_distributed():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = sample_timesteps(20000, "uniform", generator=g1)
    assert torch.equal(a, sample_timesteps(20000, "uniform", generator=g2))
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean().item() - 0.5) < 0.01
    ln = sample_timesteps(20000, "logit_normal", sigma=1.0, generator=torch.Generator().manual_seed(1))
    logits = torch.log(ln / (1 - ln))
    assert abs(logits.mean().item()) < 0.03 and abs(logits.std().item() - 1.0) < 0.03
    shifted = sample_timesteps(20000, "logit_normal", sigma=0.5, mean=1.0, generator=torch.Generator().manual_seed(1))
    assert abs(torch.logit(shifted).mean().item() - 1.0) < 0.03
    with pytest.raises(ValueError, match="uniform"):
        sample_timesteps(4, "cosine")
    assert sample_timesteps(4, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert math.isclose(FlowMatching(min_sigma=0.1).time_grid(2)[-1].item(), 0.9, rel_tol=1e-6)
