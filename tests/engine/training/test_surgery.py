"""Spectral surgery: sensitivities from real gradients, reweighting, nuclear norm kept."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from selva_engine.model.lora import apply_lora, lora_layers
from selva_engine.training.surgery import component_weights, spectral_surgery


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(12, 10)


def _model(rank: int = 4) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    model = Two()
    apply_lora(model, rank=rank, alpha=2.0 * rank, rslora=True, init_mode="pissa")
    return model, lora_layers(model)["attn.qkv"]


def test_weights_keep_the_nuclear_norm() -> None:
    s = torch.tensor([4.0, 3.0, 2.0, 1.0])
    m = component_weights(torch.tensor([1.0, -1.0, 0.5, -0.2]), s, "smooth_abs")
    assert torch.allclose((m * s).sum(), s.sum())
    hard = component_weights(torch.tensor([1.0, -1.0, 0.5, -0.2]), s, "hard")
    assert torch.equal(hard > 0, torch.tensor([True, False, True, False]))
    assert torch.allclose((hard * s).sum(), s.sum())
    assert torch.equal(component_weights(-torch.ones(4), s, "hard"), torch.ones(4))
    with pytest.raises(ValueError, match="smooth_abs"):
        component_weights(s, s, "soft")


def test_hard_surgery_keeps_the_components_the_gradient_says() -> None:
    """With loss = <C, dW> and C = U diag(c) V^T, g_k = 2 c_k S_k: hard mode keeps the
    components with c_k > 0, rescaled so that the singular values still sum to sum(S)."""
    model, layer = _model()
    with torch.no_grad():
        dw = layer.delta_weight()
    u, s, vh = torch.linalg.svd(dw, full_matrices=False)
    u, s, vh = u[:, :4], s[:4], vh[:4]
    c = torch.tensor([1.0, -1.0, 1.0, -1.0])
    target = (u * c) @ vh

    def loss_fn(_: int) -> torch.Tensor:
        return (target * (layer.scale * layer.lora_B @ layer.lora_A)).sum()

    result = spectral_surgery(model, loss_fn, samples=3, mode="hard")
    assert result.layers == 1 and result.samples == 3 and result.kept_fraction == 0.5
    new = layer.delta_weight().detach()
    kept = s[[0, 2]].sum()
    expect = (u[:, [0, 2]] * (s[[0, 2]] * s.sum() / kept)) @ vh[[0, 2]]
    assert torch.allclose(new, expect, atol=1e-4)
    assert torch.allclose(torch.linalg.svdvals(new).sum(), s.sum(), rtol=1e-4)
    assert layer.lora_A.grad is None and layer.lora_B.grad is None


def test_surgery_needs_lora_layers_and_a_known_mode() -> None:
    with pytest.raises(ValueError, match="LoRA"):
        spectral_surgery(nn.Linear(2, 2), lambda i: torch.zeros(()), 1, "hard")
    model, _ = _model()
    with pytest.raises(ValueError, match="unknown"):
        spectral_surgery(model, lambda i: torch.zeros(()), 1, "off")
