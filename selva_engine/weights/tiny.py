"""Tiny weight directories: every file of a tiny variant, in the real layout and formats.

The demo and the tests go through the same loading code as real weights: `make_tiny` writes
random (seeded) weights for the CLIP text tower, the generator, the audio VAE and the vocoder
where `selva_engine.weights.locate` finds them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from selva_engine.audio.bigvgan import BigVGAN, split_weight_norm
from selva_engine.audio.vae import VAE
from selva_engine.audio.vocoder import V2_FILES
from selva_engine.io import atomic_torch_save, atomic_write_json
from selva_engine.model.generator import Generator
from selva_engine.model.variants import Variant, get_variant
from selva_engine.text.clip import TextEncoder, write_tiny_text_encoder
from selva_engine.weights.locate import (
    TINY_V1_CONFIG,
    TINY_V2_CONFIG,
    V2_DIR,
    VariantWeights,
    resolve,
)
from selva_engine.weights.tiny_video import TINY_CLIP_VISION_CFG, write_tiny_video_encoders

__all__ = ["make_tiny"]


def _tiny_vae_stats(n_mels: int, log_base: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Plausible per-bin log-mel statistics: quieter and narrower towards high bands.
    scale = 1.0 if log_base == 10.0 else math.log(10.0)
    pos = torch.linspace(0.0, 1.0, n_mels)
    mean = (-2.0 - 3.0 * pos) * scale
    std = (1.0 - 0.3 * pos) * scale
    return mean.view(1, n_mels, 1), std.view(1, n_mels, 1)


def _random_generator_sd(variant: Variant, empty_text: torch.Tensor, seed: int) -> dict:

    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in Generator(**variant.generator_kwargs()).state_dict().items()}
    sd = {}
    for key, shape in shapes.items():
        if key == "latent_mean":
            sd[key] = 0.05 * torch.randn(shape, generator=gen)
        elif key == "latent_std":
            sd[key] = torch.exp(0.1 * torch.randn(shape, generator=gen))  # positive, ~1
        elif key == "empty_string_feat":
            sd[key] = empty_text.reshape(shape).clone()
        elif key.endswith("norm.weight"):
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=gen)
        elif len(shape) >= 2:  # unit-variance activations: std 1/sqrt(fan_in)
            sd[key] = torch.randn(shape, generator=gen) / math.sqrt(math.prod(shape[1:]))
        else:
            sd[key] = 0.02 * torch.randn(shape, generator=gen)
    return sd


def make_tiny(selva_dir: Path | str, variant: str = "tiny_16k", seed: int = 0) -> VariantWeights:
    """Write a complete tiny weights directory for `variant` (real layout and formats).

    Writes the CLIP text tower (`clip/`), the generator (`generator_<variant>_sup_5.pth`,
    flat state dict, latent stats ~N(0, 1), `empty_string_feat` = the tiny CLIP's features
    of ""), the raw VAE (`ext/v1-16.pth` or `ext/v1-44.pth`) and the vocoder
    (`ext/best_netG.pt` or `ext/bigvgan_v2_44khz_128band_512x/`), plus the video encoders
    (`t5/`, `video_enc_sup_5.pth`, the CLIP image tower inside `clip/`). Deterministic for `seed`;
    files are written atomically. Returns `resolve(selva_dir, variant)`.
    """
    v = get_variant(variant)
    if not v.tiny:
        raise ValueError(f"make_tiny writes tiny variants only, not {variant!r}")
    root = Path(selva_dir)
    text_dir = write_tiny_text_encoder(root / "clip", width=v.text_dim, seed=seed,
                                       embed_dim=v.clip_dim, vision_cfg=TINY_CLIP_VISION_CFG)
    enc = TextEncoder.from_dir(text_dir)
    empty = enc.encode([""])[0]  # (77, text_dim)
    enc.free()
    atomic_torch_save(root / v.generator_file, _random_generator_sd(v, empty, seed + 1))

    gen = torch.Generator().manual_seed(seed + 2)
    m, e, d = v.vae_dims
    vae_sd = {k: torch.randn(t.shape, generator=gen) for k, t in
              VAE(data_dim=m, embed_dim=e, hidden_dim=d).state_dict().items()}
    for k in ("encoder.learnable_gain", "decoder.learnable_gain"):
        vae_sd[k] = 0.1 * vae_sd[k]
    vae_sd["data_mean"], vae_sd["data_std"] = _tiny_vae_stats(m, v.audio.log_base)
    atomic_torch_save(root / "ext" / v.audio.vae_file, vae_sd)

    cfg = TINY_V1_CONFIG if v.audio.vocoder == "bigvgan_v1" else TINY_V2_CONFIG
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        vocoder = BigVGAN.from_config(cfg)
    if v.audio.vocoder == "bigvgan_v1":
        payload = {"generator": split_weight_norm(vocoder), "config": json.dumps(cfg)}
        atomic_torch_save(root / "ext" / "best_netG.pt", payload)
    else:
        atomic_write_json(root / "ext" / V2_DIR / V2_FILES[0], cfg)
        payload = {"generator": split_weight_norm(vocoder, legacy=True)}
        atomic_torch_save(root / "ext" / V2_DIR / V2_FILES[1], payload)
    write_tiny_video_encoders(root, v, seed=seed)
    return resolve(root, variant)

