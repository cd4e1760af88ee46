"""Vocoders: log-mel (B, M, T) -> waveform (B, 1, T * hop), float32, from local files only.

16 kHz: BigVGAN v1 from Make-An-Audio 2's `best_netG.pt` ({"generator": state_dict}; its
hyper-parameters are fixed in the reference yml and reproduced in `V1_16K_CONFIG`).
44.1 kHz: NVIDIA BigVGAN-v2 `bigvgan_v2_44khz_128band_512x`: a directory holding
`config.json` + `bigvgan_generator.pt` ({"generator": state_dict}). Nothing is ever
downloaded; `selva_engine.weights.locate` finds the files. The network itself is our own
`selva_engine.audio.bigvgan.BigVGAN` (that module's docstring says why not the PyPI package).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from selva_engine.audio.bigvgan import BigVGAN, fold_weight_norm
from selva_engine.io import safe_torch_load

__all__ = [
    "V1_16K_CONFIG",
    "V2_44K_CONFIG",
    "V2_FILES",
    "VocoderLoadError",
    "build_bigvgan",
    "load_bigvgan_v1",
    "load_bigvgan_v2",
    "load_vocoder",
]

# Model-relevant hyper-parameters of the 16 kHz vocoder (reference bigvgan_vocoder.yml).
V1_16K_CONFIG: dict = {
    "num_mels": 80,
    "upsample_rates": [4, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock": "1",
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "activation": "snakebeta",
    "snake_logscale": True,
    "use_tanh_at_final": True,
    "use_bias_at_final": True,
}

# The published config.json of bigvgan_v2_44khz_128band_512x (model and mel fields); the
# loader always reads the file next to the weights, this copy documents it and seeds tiny dirs.
V2_44K_CONFIG: dict = {
    "resblock": "1",
    "num_mels": 128,
    "upsample_rates": [8, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "activation": "snakebeta",
    "snake_logscale": True,
    "n_fft": 2048,
    "hop_size": 512,
    "win_size": 2048,
    "sampling_rate": 44100,
    "fmin": 0,
    "fmax": None,
}

# The two files of a BigVGAN-v2 directory: hyper-parameters, then {"generator": state dict}.
V2_FILES = ("config.json", "bigvgan_generator.pt")


class VocoderLoadError(ValueError):
    """A vocoder file is malformed or does not fit the expected network."""


def build_bigvgan(config: dict, device: torch.device | str = "cpu") -> BigVGAN:
    """An untrained BigVGAN for `config` (yml/config.json keys), eval mode, on `device`."""
    return BigVGAN.from_config(config).eval().to(device)


def _load_generator_sd(path: Path, what: str) -> dict[str, torch.Tensor]:
    return _generator_entry(safe_torch_load(path, what=what), path, what)


def _generator_entry(obj: object, path: Path, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, dict) or "generator" not in obj:
        keys = list(obj)[:5] if isinstance(obj, dict) else type(obj).__name__
        raise VocoderLoadError(f"{path}: {what} has no 'generator' entry (found {keys})")
    sd = obj["generator"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise VocoderLoadError(f"{path}: {what}['generator'] is not a state dict of tensors")
    return sd


def _into(model: BigVGAN, sd: dict[str, torch.Tensor], path: Path, what: str) -> BigVGAN:
    try:
        folded = fold_weight_norm(sd)
    except KeyError as exc:
        raise VocoderLoadError(f"{path}: {what}: {exc.args[0]}") from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in folded.items()}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [f"{k}: {got[k]} != {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    if problems:
        raise VocoderLoadError(
            f"{path}: {what} does not fit the configured network; {len(problems)} problem(s): "
            f"{'; '.join(problems[:5])} (wrong file for this mode or variant?)"
        )
    model.load_state_dict({k: v.float() for k, v in folded.items()}, strict=True)
    model.requires_grad_(False)
    return model.eval()


def load_bigvgan_v1(
    path: Path | str, *, config: dict | None = None, device: torch.device | str = "cpu"
) -> BigVGAN:
    """Load the 16 kHz BigVGAN v1 from `best_netG.pt` (dict with "generator").

    `config` defaults to the JSON hyper-parameters embedded under "config" (only our tiny
    files carry one) and else to V1_16K_CONFIG, the real file's fixed yml values. Weight norm
    is folded; returns an eval-mode fp32 module on `device` with frozen parameters.
    """
    path = Path(path)
    what = "BigVGAN v1 vocoder (best_netG.pt)"
    obj = safe_torch_load(path, what=what)
    cfg = config or _embedded_config(obj, path) or V1_16K_CONFIG
    sd = _generator_entry(obj, path, what)
    return _into(BigVGAN.from_config(cfg), sd, path, what).to(device)


def _embedded_config(obj: object, path: Path) -> dict | None:
    # Our tiny best_netG.pt files carry their hyper-parameters as JSON text under "config";
    # the real file has none (its yml is fixed), so absence means V1_16K_CONFIG.
    if isinstance(obj, dict) and isinstance(obj.get("config"), str):
        try:
            return json.loads(obj["config"])
        except json.JSONDecodeError as exc:
            raise VocoderLoadError(f"{path}: unreadable embedded vocoder config: {exc}") from None
    return None


def load_bigvgan_v2(directory: Path | str, *, device: torch.device | str = "cpu") -> BigVGAN:
    """Load BigVGAN-v2 from a directory with `config.json` + `bigvgan_generator.pt`.

    The config decides the network (44k: 128 mels, hop 512, no tanh, no final bias). Weight
    norm is folded; returns an eval-mode fp32 module on `device` with frozen parameters.
    """
    directory = Path(directory)
    cfg_path, weights_path = (directory / n for n in V2_FILES)
    if not cfg_path.is_file():
        raise FileNotFoundError(f"BigVGAN-v2 config not found: {cfg_path}")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise VocoderLoadError(f"{cfg_path}: unreadable BigVGAN-v2 config: {exc}") from None
    sd = _load_generator_sd(weights_path, "BigVGAN-v2 generator (bigvgan_generator.pt)")
    return _into(BigVGAN.from_config(cfg), sd, weights_path, "BigVGAN-v2 generator").to(device)


def load_vocoder(kind: str, path: Path | str, *, device: torch.device | str = "cpu") -> BigVGAN:
    """Load the vocoder of an audio mode: kind "bigvgan_v1" (file) or "bigvgan_v2" (directory)."""
    if kind == "bigvgan_v1":
        return load_bigvgan_v1(path, device=device)
    if kind == "bigvgan_v2":
        return load_bigvgan_v2(path, device=device)
    raise ValueError(f"unknown vocoder kind {kind!r} (bigvgan_v1, bigvgan_v2)")
