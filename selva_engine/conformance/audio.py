"""Conformance functions for the audio goldens: kinds "mel", "vae", "bigvgan_v1", "bigvgan_v2".

Each `run_<kind>(sidecar, golden_dir, io)` builds the module from the sidecar's own config
(mode parameters, widths, hyper-parameters, file names; nothing is assumed from the shared
goldens), runs it on the golden's `input.*` arrays and returns computed arrays keyed like the
golden's `output.*` / `debug.*` names (plus `effective.<key>` VAE weights after the forced
weight normalisation). `selva_engine.conformance.runner` compares them with the sidecar tolerances.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch

from selva_engine.audio.bigvgan import BigVGAN, fold_weight_norm
from selva_engine.audio.mel import MelConverter
from selva_engine.audio.vae import VAE, force_weight_norm_
from selva_engine.audio.vocoder import V2_FILES, load_bigvgan_v2
from selva_engine.io import atomic_torch_save, atomic_write_json

__all__ = ["mel_converter_from_params", "run_bigvgan_v1", "run_bigvgan_v2", "run_mel", "run_vae"]


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().float().numpy()


def _log_base(spec: object) -> float:
    text = str(spec).lower().replace(" ", "")
    if text in ("log10", "10"):
        return 10.0
    if text in ("log2", "2"):
        return 2.0
    if text in ("ln", "naturallog", "log", "e", "natural"):
        return math.e
    raise ValueError(f"unknown mel log base {spec!r} (expected log10 or natural log)")


def mel_converter_from_params(params: dict) -> MelConverter:
    """A MelConverter from a mel sidecar's `params` block (librosa-style names).

    Keys: sampling_rate, n_fft, num_mels, hop_size, win_size, fmin, fmax (None = sr / 2), log
    ("log10" / "natural log"), optional reflect_pad_each_side, magnitude_eps_inside_sqrt and
    clamp_min_before_log. Raises ValueError for a centred STFT or an unknown log.
    """
    if params.get("center", False):
        raise ValueError("centred STFT is not the reference mel converter")
    return MelConverter(
        sampling_rate=int(params["sampling_rate"]),
        n_fft=int(params["n_fft"]),
        hop=int(params["hop_size"]),
        win_length=int(params.get("win_size", params["n_fft"])),
        n_mels=int(params["num_mels"]),
        f_min=float(params.get("fmin", 0.0) or 0.0),
        f_max=None if params.get("fmax") is None else float(params["fmax"]),
        log_base=_log_base(params.get("log", "log10")),
        mag_eps=float(params.get("magnitude_eps_inside_sqrt", 1e-9)),
        clamp_min=float(params.get("clamp_min_before_log", 1e-5)),
        pad=params.get("reflect_pad_each_side"),
    )


def run_mel(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Mel golden: `output.mel` (B, n_mels, frames), `debug.mel_basis`, `debug.window`."""
    conv = mel_converter_from_params(sidecar["params"])
    with torch.no_grad():
        mel = conv(torch.from_numpy(io["input.waveform"]))
    return {
        "output.mel": _np(mel),
        "debug.mel_basis": _np(conv.mel_basis),
        "debug.window": _np(conv.window),
    }


def run_vae(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """VAE golden: encoder moments / posterior of `input.mel`, decodes of `input.z` and the mean.

    Loads the raw weights file strictly, applies the forced weight normalisation (its results
    come back as `effective.<key>`), then computes every output in float32.
    """
    cfg = sidecar["constructor_config"]
    vae = VAE(data_dim=int(cfg["data_dim"]), embed_dim=int(cfg["embed_dim"]),
              hidden_dim=int(cfg["hidden_dim"]))
    raw = _npz(Path(golden_dir) / sidecar["weights_file"])
    vae.load_state_dict({k: torch.from_numpy(v) for k, v in raw.items()}, strict=True)
    force_weight_norm_(vae)
    out = {"effective." + k: _np(v) for k, v in vae.state_dict().items()}
    with torch.no_grad():
        if "input.mel" in io:
            mel = torch.from_numpy(io["input.mel"])
            mean, logvar, std = vae.encode(mel)
            out["output.encoder_moments"] = _np(vae.encode_moments(mel))
            out["output.posterior_mean"] = _np(mean)
            out["output.posterior_logvar"] = _np(logvar)
            out["output.posterior_std"] = _np(std)
            out["output.reconstruction_from_mean"] = _np(vae.decode(mean))
        if "input.z" in io:
            z = torch.from_numpy(io["input.z"])
            out["output.decoded"] = _np(vae.decode(z))
            out["output.decoded_before_unnormalize"] = _np(vae.decode(z, unnormalize=False))
    return out


def run_bigvgan_v1(
    sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """BigVGAN golden: strict load (either weight-norm spelling), fold, `output.waveform`."""
    model = BigVGAN.from_config(sidecar["hyper_parameters"]).eval()
    raw = _npz(Path(golden_dir) / sidecar["weights_file"])
    sd = fold_weight_norm({k: torch.from_numpy(v) for k, v in raw.items()})
    model.load_state_dict(sd, strict=True)
    with torch.no_grad():
        wave = model(torch.from_numpy(io["input.mel"]))
    return {"output.waveform": _np(wave)}


def run_bigvgan_v2(
    sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """BigVGAN-v2 golden through the production loader: `output.waveform` of `input.mel`.

    The sidecar's `hyper_parameters` become the `config.json` and its weights the
    `bigvgan_generator.pt` ({"generator": state dict}) of a temporary v2 directory, which
    `load_bigvgan_v2` then loads exactly as it loads the released 44.1 kHz vocoder (strict key
    and shape check, weight norm folded), so the final clamp/tanh and final-bias settings are
    honoured only if the production path honours them.
    """
    raw = _npz(Path(golden_dir) / sidecar["weights_file"])
    with tempfile.TemporaryDirectory(prefix="bigvgan-v2-golden-") as tmp:
        config_name, weights_name = V2_FILES
        atomic_write_json(Path(tmp) / config_name, sidecar["hyper_parameters"])
        atomic_torch_save(Path(tmp) / weights_name,
                          {"generator": {k: torch.from_numpy(v) for k, v in raw.items()}})
        model = load_bigvgan_v2(tmp)
    with torch.no_grad():
        wave = model(torch.from_numpy(io["input.mel"]))
    return {"output.waveform": _np(wave)}
