"""Spectral metrics of a generated sample, alone and against reference audio (numpy only).

Definitions (all from one STFT: n_fft 2048, hop 512, periodic Hann window, no centring;
a signal shorter than n_fft is zero-padded to one frame; power P = |X|^2):

- Shape metrics use the time-averaged power spectrum p(f) = mean over frames of P:
  `hf_energy_ratio` = sum p(f >= 4 kHz) / sum p; `spectral_centroid_hz` = sum f·p / sum p;
  `spectral_rolloff_hz` = lowest bin frequency where the cumulative power reaches 85 %;
  `spectral_flatness` = geometric mean / arithmetic mean of p (1 for white noise, ~0 for a
  tone). Averaging over time first makes white noise read ~1 instead of exp(-γ) ≈ 0.56.
- `temporal_variance` = std / mean of the per-frame RMS of the waveform frames.
- Versus a reference (both cut to the shorter length, same sample rate):
  `log_spectral_distance_db` = sqrt(mean over frames and bins of (10·log10 P_s − 10·log10
  P_r)^2), i.e. the RMS of the dB difference of the STFT magnitudes;
  `mel_cepstral_distortion` = (10/ln 10) · mean over frames of sqrt(mean over 80 bands of
  (ln M_s − ln M_r)^2), M = mel power (Slaney mel scale and area normalisation, 0 Hz to
  sr/2) — the mean per-frame RMS difference of the log-mel energies in dB (computed on log
  mel energies, not on cepstral coefficients);
  `per_band_correlation` = mean over the 80 bands of the Pearson r between the two
  log-mel time series (a band constant in either signal counts 1 when both are equal, else 0).
- Silence: power floors of 1e-10 keep logs finite; ratios over zero power are defined 0
  (hf ratio, centroid, rolloff, flatness, temporal variance). No value is ever NaN.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from selva_engine.audio.mel import slaney_mel_filterbank

__all__ = ["N_FFT", "HOP", "N_MELS", "SampleMetrics", "compute_metrics", "mel_filterbank"]

N_FFT = 2048
HOP = 512
N_MELS = 80
HF_CUTOFF_HZ = 4000.0
ROLLOFF = 0.85
_POWER_FLOOR = 1e-10  # -100 dB re full scale power, keeps log() finite on silence


@dataclass(frozen=True)
class SampleMetrics:
    """Metrics of one sample; the reference-comparison fields are None without a reference."""

    hf_energy_ratio: float
    spectral_centroid_hz: float
    spectral_rolloff_hz: float
    spectral_flatness: float
    temporal_variance: float
    log_spectral_distance_db: float | None = None
    mel_cepstral_distortion: float | None = None
    per_band_correlation: float | None = None

    def to_dict(self) -> dict[str, float]:
        """Plain dict of the metrics that were computed (None fields are left out, TOML-safe)."""
        return {k: float(v) for k, v in asdict(self).items() if v is not None}


def _as_mono(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be mono audio of shape (samples,), got {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds NaN or infinite samples")
    return arr


def _frames(x: np.ndarray) -> np.ndarray:
    """(samples,) -> (frames, N_FFT) without centring; short signals become one padded frame."""
    if x.size < N_FFT:
        x = np.pad(x, (0, N_FFT - x.size))
    n = 1 + (x.size - N_FFT) // HOP
    return np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP][:n]


def _power_spec(x: np.ndarray) -> np.ndarray:
    """Power spectrogram (frames, N_FFT//2 + 1) with a periodic Hann window."""
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)
    return np.abs(np.fft.rfft(_frames(x) * win, axis=1)) ** 2


def mel_filterbank(sr: int, n_fft: int = N_FFT, n_mels: int = N_MELS, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """Slaney-style triangular mel filterbank (n_mels, n_fft//2 + 1), area-normalised, float64:
    the model's own (selva_engine.audio.mel, librosa's default `htk=False, norm="slaney"`)."""
    return slaney_mel_filterbank(sr, n_fft, n_mels, f_min, f_max, dtype=np.float64)


def _shape_metrics(x: np.ndarray, sr: int, power: np.ndarray) -> dict[str, float]:
    p = power.mean(axis=0)  # (bins,) time-averaged power spectrum
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sr)
    total = float(p.sum())
    rms = np.sqrt((_frames(x) ** 2).mean(axis=1))  # (frames,) per-frame RMS
    mean_rms = float(rms.mean())
    tv = float(rms.std() / mean_rms) if mean_rms > 0 else 0.0
    if total <= 0.0 or not np.isfinite(total):
        return dict(hf_energy_ratio=0.0, spectral_centroid_hz=0.0, spectral_rolloff_hz=0.0,
                    spectral_flatness=0.0, temporal_variance=tv)
    cum = np.cumsum(p)
    roll_idx = int(np.searchsorted(cum, ROLLOFF * total))
    floor = max(total / p.size * 1e-12, 1e-300)  # relative floor: no log(0) on a pure tone
    gmean = float(np.exp(np.mean(np.log(p + floor))))
    return dict(
        hf_energy_ratio=float(p[freqs >= HF_CUTOFF_HZ].sum() / total),
        spectral_centroid_hz=float((freqs * p).sum() / total),
        spectral_rolloff_hz=float(freqs[min(roll_idx, freqs.size - 1)]),
        spectral_flatness=float(min(1.0, gmean / float(p.mean() + floor))),
        temporal_variance=tv,
    )


def _band_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Pearson r over columns of two (frames, bands) arrays."""
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    sa = np.sqrt((a**2).sum(axis=0))
    sb = np.sqrt((b**2).sum(axis=0))
    tol = 1e-9 * max(1.0, float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)))
    r = np.empty(a.shape[1])
    ok = (sa > tol) & (sb > tol)
    r[ok] = (a[:, ok] * b[:, ok]).sum(axis=0) / (sa[ok] * sb[ok])
    # Constant bands: perfectly "correlated" only if both are constant (identical shape).
    r[~ok] = np.where((sa[~ok] <= tol) & (sb[~ok] <= tol), 1.0, 0.0)
    return float(np.clip(r, -1.0, 1.0).mean())


def _reference_metrics(ps: np.ndarray, pr: np.ndarray, sr: int) -> dict[str, float]:
    n = min(ps.shape[0], pr.shape[0])
    ps, pr = ps[:n], pr[:n]
    db_s = 10.0 * np.log10(ps + _POWER_FLOOR)
    db_r = 10.0 * np.log10(pr + _POWER_FLOOR)
    lsd = float(np.sqrt(np.mean((db_s - db_r) ** 2)))
    fb = mel_filterbank(sr)  # (80, bins)
    ms = np.log(ps @ fb.T + _POWER_FLOOR)  # (frames, 80) natural-log mel power
    mr = np.log(pr @ fb.T + _POWER_FLOOR)
    mcd = float((10.0 / math.log(10.0)) * np.mean(np.sqrt(np.mean((ms - mr) ** 2, axis=1))))
    return dict(log_spectral_distance_db=lsd, mel_cepstral_distortion=mcd,
                per_band_correlation=_band_correlation(ms, mr))


def compute_metrics(sample: np.ndarray, sr: int, reference: np.ndarray | None = None) -> SampleMetrics:
    """Compute the spectral metrics of `sample` (mono, `sr` Hz), optionally vs `reference`.

    `sample` and `reference` are 1-D float arrays (a (1, n)/(n, 1) array is accepted) at the
    same sample rate `sr`; the comparison uses the first min(len) samples of both. Returns a
    `SampleMetrics` whose reference fields are None without a reference. Raises ValueError
    for empty, multi-channel or non-finite input. Pure function, no side effects.
    """
    x = _as_mono(sample, "sample")
    if sr <= 0:
        raise ValueError(f"sampling rate must be positive, got {sr}")
    power = _power_spec(x)
    values = _shape_metrics(x, sr, power)
    if reference is not None:
        ref = _as_mono(reference, "reference")
        n = min(x.size, ref.size)
        values.update(_reference_metrics(_power_spec(x[:n]), _power_spec(ref[:n]), sr))
    return SampleMetrics(**values)
