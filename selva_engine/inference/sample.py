"""Inference: generator (+ adapter at a strength) + .npz features + prompt -> waveform.

`generate_latents` is the flow sampler shared by the trainer's checkpoint samples, the
evaluator and `selva-sample` (the ComfyUI LoRA Loader + Sampler path without ComfyUI).
"""

from __future__ import annotations

import torch

from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Generator

__all__ = ["decode_to_audio", "generate_latents"]


@torch.no_grad()
def generate_latents(
    model: Generator,
    clip: torch.Tensor,
    sync: torch.Tensor,
    text: torch.Tensor,
    *,
    noise: torch.Tensor,
    negative_text: torch.Tensor | None = None,
    cfg: float = 4.5,
    steps: int = 25,
) -> torch.Tensor:
    """Euler-sample raw VAE latents (B, N, L) from noise (B, N, L).

    clip (B, Nc, clip_dim), sync (B, Ns, sync_dim), text (B, Nt, text_dim) are the
    conditions; negative_text (B or 1, Nt, text_dim) replaces the empty text in the
    unconditional branch; cfg < 1 samples the conditional flow only. The result is
    unnormalised (ready for the VAE decoder).
    """
    was_training = model.training
    model.eval()
    try:
        cond = model.preprocess_conditions(clip, sync, text)
        b = noise.shape[0]
        empty = model.empty_conditions(b, negative_text_features=negative_text) if cfg >= 1 else None
        fm = FlowMatching(min_sigma=0.0, num_steps=steps)
        x1 = fm.to_data(lambda t, x: model.guided_flow(x, t, cond, empty, cfg), noise)
        return model.unnormalize(x1.float())
    finally:
        model.train(was_training)


@torch.no_grad()
def decode_to_audio(codec, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents (B, N, L) -> waveform (B, T) through the VAE decoder and the vocoder (fp32)."""
    return codec.decode(latents.float())
