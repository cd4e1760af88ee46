"""The `[prepare]` spectral-match step: a smooth per-band EQ towards the VAE's training mel means.

The VAE normalises each log-mel band with the statistics of the data it was trained on
(`data_mean`, `data_std` in its weights). A clip whose average spectrum is far from those
means (too dark, too bright, a band missing) encodes and decodes worse. ComfyUI-SelVA's
Spectral Matcher node moves each band's mean log energy towards the VAE's, by `strength`,
each band's change bounded by `max_gain_db`, then restores the clip's RMS. Here the clip is
measured with the variant's own `MelConverter` (the very log-mel the VAE sees, so the target
and the measure are in one space, whatever the variant's log base), and the per-band gains are
spread over the STFT bins through the same Slaney filterbank (each bin the filterbank-weighted
mean of the bands covering it; bins no band covers are left as they are).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from selva_engine.audio.mel import MelConverter

__all__ = ["SpectralTarget", "band_gains_db", "spectral_match", "spectral_target"]


@dataclass(frozen=True)
class SpectralTarget:
    """What the match aims at: the variant's mel converter and the VAE's per-band log-mel means."""

    mel: MelConverter
    mean: torch.Tensor  # (n_mels,) in the converter's log base


def spectral_target(codec) -> SpectralTarget:
    """The target of an `AudioCodec`'s variant: its mel converter and its VAE's `data_mean`."""
    mel, vae = codec.mel, codec.vae
    if mel is None or vae is None:
        raise ValueError("the spectral match needs the codec's mel converter and VAE (it was freed)")
    return SpectralTarget(mel=mel, mean=vae.data_mean.detach().reshape(-1).float().cpu())


def band_gains_db(wave: np.ndarray, target: SpectralTarget, strength: float, max_gain_db: float) -> np.ndarray:
    """The per-band gains in dB the match applies to (T,) `wave` (at the converter's rate)."""
    mel = target.mel.to("cpu")
    current = mel(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))).mean(dim=-1)
    db_per_unit = 20.0 * math.log10(mel.log_base)  # one log-mel unit in dB of magnitude
    gains = (target.mean - current) * float(strength) * db_per_unit
    return gains.clamp(-max_gain_db, max_gain_db).numpy()


def spectral_match(wave: np.ndarray, target: SpectralTarget, strength: float, max_gain_db: float) -> np.ndarray:
    """(T,) float32 at the converter's rate, EQ'd towards `target`; RMS kept, peak at most 1."""
    mel = target.mel.to("cpu")
    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if x.numel() < mel.n_fft or float(x.abs().max()) == 0.0:
        return np.array(wave, dtype=np.float32, copy=True)  # nothing to measure
    gains_db = torch.from_numpy(band_gains_db(wave, target, strength, max_gain_db))
    basis = mel.mel_basis.float()  # (n_mels, n_freqs)
    weight = basis.sum(dim=0)
    bin_db = torch.where(weight > 0, (gains_db @ basis) / weight.clamp(min=1e-12), torch.zeros_like(weight))
    window = torch.hann_window(mel.n_fft, periodic=True)
    spec = torch.stft(x, mel.n_fft, hop_length=mel.hop, window=window, center=True, return_complex=True)
    spec = spec * (10.0 ** (bin_db / 20.0)).unsqueeze(-1)
    out = torch.istft(spec, mel.n_fft, hop_length=mel.hop, window=window, center=True, length=x.numel())
    rms_in, rms_out = x.pow(2).mean().sqrt(), out.pow(2).mean().sqrt()
    if float(rms_out) > 0:
        out = out * (rms_in / rms_out)
    peak = float(out.abs().max())
    if peak > 1.0:
        out = out / peak
    return out.numpy().astype(np.float32)
