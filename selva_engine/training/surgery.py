"""Spectral surgery: a post-training reweighting of each LoRA update's singular values.

ComfyUI-SelVA's newest node trainer runs it after a normal completion (SELVA-FACTS 10.3).
Per wrapped layer the update dW = scale * B A = U S V^T (rank r). Over n calibration samples
(batch 1, t uniform) it accumulates the sensitivity of each singular value,
g_k = u_k^T G v_k, where G = grad_B A + B grad_A approximates the gradient of dW. The mean
sensitivities set per-component weights:

- "smooth_abs": m_k = sigmoid(5 g_k / max|g|)
- "hard":       m_k = 1 if g_k > 0 else 0

rescaled so that sum(m S) = sum(S) (the update keeps its nuclear norm); then
dW' = U diag(m S) V^T is factored back into A = sqrt(S') V'^T, B = U' sqrt(S') (top r), with
dW'/scale so the layer's scale is unchanged.

The node's own pass fails on a shape error (it multiplies B^T, not B, by grad_A) and then
silently keeps the un-operated adapter; here the shapes are (out, r) @ (r, in) and a failure
is reported, not hidden. The result is written as a separate adapter file, so the
evaluator can compare it with the plain final adapter by ear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from selva_engine.model.lora import LoRALinear, lora_layers

__all__ = ["MODES", "SurgeryResult", "component_weights", "spectral_surgery"]

MODES = ("off", "smooth_abs", "hard")


@dataclass(frozen=True)
class SurgeryResult:
    """What a surgery pass did: mode, calibration samples, and per-layer mean weights."""

    mode: str
    samples: int
    layers: int
    mean_weight: float  # mean of m_k over all components of all layers (1.0 = unchanged)
    kept_fraction: float  # fraction of components with m_k > 0.5

    def to_dict(self) -> dict:
        """JSON-ready fields for meta.json."""
        return {"mode": self.mode, "samples": self.samples, "layers": self.layers,
                "mean_weight": self.mean_weight, "kept_fraction": self.kept_fraction,
                "rule": "m_k = sigmoid(5 g_k / max|g|)" if self.mode == "smooth_abs"
                else "m_k = 1[g_k > 0]"}


def component_weights(g: torch.Tensor, s: torch.Tensor, mode: str) -> torch.Tensor:
    """Weights m (r,) for mean sensitivities `g` (r,) and singular values `s` (r,), rescaled
    so that sum(m * s) == sum(s). A layer whose weights are all zero keeps m = 1."""
    if mode == "smooth_abs":
        m = torch.sigmoid(5.0 * g / g.abs().max().clamp_min(1e-30))
    elif mode == "hard":
        m = (g > 0).to(s.dtype)
    else:
        raise ValueError(f"unknown spectral surgery mode {mode!r} (expected smooth_abs or hard)")
    mass = (m * s).sum()
    if float(mass) <= 0.0:
        return torch.ones_like(s)
    return m * (s.sum() / mass)


def _svd(layer: LoRALinear) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """U (out, r), S (r,), Vh (r, in) of the layer's update scale * B A, fp32."""
    u, s, vh = torch.linalg.svd(layer.delta_weight(), full_matrices=False)
    r = layer.rank
    return u[:, :r], s[:r], vh[:r]


def _sensitivities(layers: dict[str, LoRALinear], bases: dict, loss_fn: Callable[[int], torch.Tensor],
                   samples: int) -> dict[str, torch.Tensor]:
    """Mean g_k per layer over `samples` calls of `loss_fn(i)` (each followed by backward)."""
    total = {name: torch.zeros(layer.rank) for name, layer in layers.items()}
    for i in range(samples):
        for layer in layers.values():
            layer.lora_A.grad = layer.lora_B.grad = None
        loss_fn(i).backward()
        with torch.no_grad():
            for name, layer in layers.items():
                a, b = layer.lora_A.float(), layer.lora_B.float()
                grad = layer.lora_B.grad.float() @ a + b @ layer.lora_A.grad.float()  # (out, in)
                u, _, vh = bases[name]
                total[name] += ((u.t() @ grad) * vh).sum(dim=1).cpu()  # diag(U^T G V)
    for layer in layers.values():
        layer.lora_A.grad = layer.lora_B.grad = None
    return {name: t / max(samples, 1) for name, t in total.items()}


def _refactor(layer: LoRALinear, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> None:
    """Write dW' / scale = U diag(s) Vh back as A = sqrt(S') V'^T, B = U' sqrt(S')."""
    target = (u * s) @ vh / layer.scale
    u2, s2, vh2 = torch.linalg.svd(target, full_matrices=False)
    r = layer.rank
    root = s2[:r].sqrt()
    with torch.no_grad():
        layer.lora_A.copy_((root[:, None] * vh2[:r]).to(layer.lora_A.dtype))
        layer.lora_B.copy_((u2[:, :r] * root[None, :]).to(layer.lora_B.dtype))


def spectral_surgery(model: torch.nn.Module, loss_fn: Callable[[int], torch.Tensor],
                     samples: int, mode: str) -> SurgeryResult:
    """Reweight every LoRA layer of `model` in place (see the module docstring).

    `loss_fn(i)` returns the scalar training loss of calibration sample i (batch 1, t
    uniform); it is called `samples` times with gradients on the LoRA parameters. Returns a
    SurgeryResult; raises ValueError for an unknown mode or a model without LoRA layers.
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("spectral surgery needs a model with LoRA layers")
    if mode not in MODES[1:]:
        raise ValueError(f"unknown spectral surgery mode {mode!r} (expected smooth_abs or hard)")
    with torch.no_grad():
        bases = {name: _svd(layer) for name, layer in layers.items()}
    g = _sensitivities(layers, {n: (b[0], b[1], b[2]) for n, b in bases.items()}, loss_fn, samples)
    weights = []
    for name, layer in layers.items():
        u, s, vh = bases[name]
        m = component_weights(g[name].to(s.device), s, mode)
        weights.append(m.cpu())
        _refactor(layer, u, m * s, vh)
    flat = torch.cat(weights)
    return SurgeryResult(mode, samples, len(layers), float(flat.mean()),
                         float((flat > 0.5).float().mean()))
