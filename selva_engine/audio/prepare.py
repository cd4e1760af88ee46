"""Preparation of a clip's audio before encoding: the `[prepare]` steps, in one fixed order.

The steps are those of ComfyUI-SelVA's dataset nodes, with the nodes' defaults, each off unless
switched on, and always applied in the nodes' documented chain order:

1. `resample`: to the model's rate with soxr VHQ (instead of torchaudio's default resampler);
2. `loudness`: gain to `target_lufs` integrated loudness (ITU-R BS.1770-4, pyloudnorm), then
   a true-peak ceiling `true_peak_dbtp` (the node limits the sample peak; here the peak after
   4x oversampling with soxr, so the ceiling holds between samples too). A clip too short or
   too quiet to measure is left as it is, as in the node;
3. `compress`: pedalboard's Compressor blended with the dry signal (parallel compression,
   `mix` 0 = dry, 1 = fully compressed);
4. `spectral_match`: a per-band EQ towards the VAE's training mel means (`data_mean`),
   `match_strength` of the way, each band within ±`match_max_gain_db`, the RMS kept
   (`selva_engine.audio.spectral`);
5. `hf_smooth`: a biquad low-pass at `cutoff_hz` (Q 0.707) blended with the dry signal by
   `blend`, then the clip's RMS restored and the peak kept at or below 1.

The prepared audio is derived data: it lives only in memory (and through the latents it gives,
in the feature cache, keyed by `PrepareSettings.digest()`); the user's files are never written.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from selva_engine.audio.files import fit_length, read_audio, resample, to_mono
from selva_engine.audio.inspect import integrated_lufs, true_peak_dbtp

if TYPE_CHECKING:  # spectral imports torch; the daemon reads PREPARE_LIMITS without it
    from selva_engine.audio.spectral import SpectralTarget

__all__ = ["PREPARE_LIMITS", "STEP_ORDER", "PrepareSettings", "check_prepare_value", "load_prepared_audio",
           "prepare"]

STEP_ORDER = ("resample", "loudness", "compress", "spectral_match", "hf_smooth")

# The nodes' ranges: key -> (lowest, highest) accepted value.
PREPARE_LIMITS: dict[str, tuple[float, float]] = {
    "target_lufs": (-40.0, -6.0),  # LUFS
    "true_peak_dbtp": (-6.0, 0.0),  # dBTP
    "threshold_db": (-40.0, -6.0),  # dBFS
    "ratio": (1.5, 4.0),  # :1
    "attack_ms": (1.0, 100.0),  # ms
    "release_ms": (20.0, 500.0),  # ms
    "mix": (0.0, 1.0),
    "match_strength": (0.0, 1.0),
    "match_max_gain_db": (1.0, 30.0),  # dB
    "cutoff_hz": (2000.0, 20000.0),  # Hz
    "blend": (0.0, 1.0),
}


@dataclass(frozen=True)
class PrepareSettings:
    """Which preparation steps run, and their settings (defaults: the ComfyUI-SelVA nodes')."""

    resample: bool = False  # soxr VHQ to the model's rate (off: torchaudio's resampler)
    loudness: bool = False  # BS.1770 gain to target_lufs, then the true-peak ceiling
    target_lufs: float = -23.0  # LUFS (EBU R128)
    true_peak_dbtp: float = -1.0  # dBTP, applied after the loudness gain
    compress: bool = False  # parallel compression with pedalboard's Compressor
    threshold_db: float = -18.0  # dBFS
    ratio: float = 2.5  # :1
    attack_ms: float = 10.0  # ms
    release_ms: float = 100.0  # ms
    mix: float = 0.4  # 0 = dry only, 1 = fully compressed
    spectral_match: bool = False  # per-band EQ towards the VAE's mel means
    match_strength: float = 0.8  # 0 = none .. 1 = the full way
    match_max_gain_db: float = 12.0  # dB, each band's change at most
    hf_smooth: bool = False  # low-pass blend
    cutoff_hz: float = 12000.0  # Hz
    blend: float = 0.7  # 0 = original, 1 = fully low-passed

    def steps(self) -> tuple[str, ...]:
        """The steps switched on, in the order they are applied."""
        return tuple(s for s in STEP_ORDER if getattr(self, s))

    def any(self) -> bool:
        return bool(self.steps())

    def applied(self) -> dict:
        """What is applied, for run.toml and meta.json: {"steps": [...], <step>: {settings}}."""
        groups = {"loudness": ("target_lufs", "true_peak_dbtp"),
                  "compress": ("threshold_db", "ratio", "attack_ms", "release_ms", "mix"),
                  "spectral_match": ("match_strength", "match_max_gain_db"),
                  "hf_smooth": ("cutoff_hz", "blend"), "resample": ()}
        out: dict = {"steps": list(self.steps())}
        for step in self.steps():
            if groups[step]:
                out[step] = {k: getattr(self, k) for k in groups[step]}
        return out

    def digest(self) -> str:
        """Hex sha256 of the steps switched on and their settings (the latent cache's key part)."""
        return hashlib.sha256(json.dumps(self.applied(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PrepareSettings:
        """Settings from a {key: value} table; unknown keys and out-of-range values raise ValueError."""
        known = {f.name: f for f in fields(cls)}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown [prepare] key {key!r} (expected one of {', '.join(known)})")
            check_prepare_value(key, value)
        return cls(**{k: (float(v) if k in PREPARE_LIMITS else v) for k, v in data.items()})


def check_prepare_value(key: str, value: object) -> None:
    """Raise ValueError naming the problem when `value` is not valid for `[prepare] key`."""
    if key not in PREPARE_LIMITS:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false (got {value!r})")
        return
    lo, hi = PREPARE_LIMITS[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key}: expected a number in [{lo:g}, {hi:g}] (got {value!r})")
    if not lo <= value <= hi:
        raise ValueError(f"{key}: out of range (got {value!r}, expected {lo:g} to {hi:g})")


def prepare(wave: np.ndarray, rate: int, settings: PrepareSettings,
            target: SpectralTarget | None = None) -> np.ndarray:
    """Apply the loudness, compress, spectral-match and HF-smooth steps switched on to (T,)
    float32 at `rate` Hz (the spectral match aims at `target`, the variant's VAE means).

    Returns a new (T,) float32 array (the input is not modified). The resample step happens at
    load time (`load_prepared_audio`), since it decides how the file reaches `rate`.
    """
    out = np.array(wave, dtype=np.float32, copy=True)
    if settings.loudness:
        out = _normalise_loudness(out, rate, settings.target_lufs, settings.true_peak_dbtp)
    if settings.compress:
        out = _compress(out, rate, settings)
    if settings.spectral_match:
        if target is None or target.mel.sampling_rate != rate:
            raise ValueError("the spectral match needs the variant's VAE means at the model's rate")
        from selva_engine.audio.spectral import spectral_match  # torch: only where the step runs
        out = spectral_match(out, target, settings.match_strength, settings.match_max_gain_db)
    if settings.hf_smooth:
        out = _hf_smooth(out, rate, settings.cutoff_hz, settings.blend)
    return out


def load_prepared_audio(path: Path | str, sampling_rate: int, num_samples: int, settings: PrepareSettings,
                        root: Path | str | None = None, target: SpectralTarget | None = None) -> np.ndarray:
    """`load_audio` with the preparation steps: mono float32 of exactly `num_samples`.

    Reads the file (inside `root`, by default its own directory), mixes to mono, resamples to
    `sampling_rate` (soxr VHQ when `settings.resample`, else torchaudio as `load_audio`), cuts
    or pads to `num_samples`, then applies `prepare`. Raises the errors of `read_audio`.
    """
    path = Path(path)
    raw = read_audio(path, max_seconds=num_samples / float(sampling_rate) + 0.25,
                     root=path.parent if root is None else root)
    mono = to_mono(raw.data)
    if settings.resample and raw.sampling_rate != sampling_rate:
        import soxr

        mono = soxr.resample(mono, raw.sampling_rate, int(sampling_rate), quality="VHQ").astype(np.float32)
    else:
        mono = resample(mono, raw.sampling_rate, int(sampling_rate))
    return prepare(fit_length(mono, int(num_samples)), int(sampling_rate), settings, target)


def _normalise_loudness(wave: np.ndarray, rate: int, target_lufs: float, ceiling_dbtp: float) -> np.ndarray:
    """Gain to `target_lufs`, then scale down so the true peak is at most `ceiling_dbtp`."""
    lufs = integrated_lufs(wave, rate)
    if lufs is None:  # shorter than one gating block, or silent: left as it is (as the node does)
        return wave
    out = (wave * 10.0 ** ((target_lufs - lufs) / 20.0)).astype(np.float32)
    peak = true_peak_dbtp(out, rate)
    if peak is not None and peak > ceiling_dbtp:
        # A little under the ceiling: oversampled peaks of the scaled clip differ in the last bits.
        out = (out * 10.0 ** ((ceiling_dbtp - peak - 1e-3) / 20.0)).astype(np.float32)
    return out


def _compress(wave: np.ndarray, rate: int, s: PrepareSettings) -> np.ndarray:
    """pedalboard Compressor on (1, T), blended with the dry signal by `s.mix`."""
    from pedalboard import Compressor, Pedalboard

    board = Pedalboard([Compressor(threshold_db=s.threshold_db, ratio=s.ratio,
                                   attack_ms=s.attack_ms, release_ms=s.release_ms)])
    wet = board(wave[None, :], rate)[0]  # (T,)
    return ((1.0 - s.mix) * wave + s.mix * wet).astype(np.float32)


def _hf_smooth(wave: np.ndarray, rate: int, cutoff_hz: float, blend: float) -> np.ndarray:
    """Blend a biquad low-pass (Q 0.707) at `cutoff_hz` in by `blend`; keep RMS, peak <= 1."""
    import torch
    import torchaudio.functional as AF

    if cutoff_hz >= rate / 2.0:  # nothing above the cutoff at this rate
        return wave
    x = torch.from_numpy(wave.astype(np.float32))
    low = AF.lowpass_biquad(x, rate, float(cutoff_hz)).numpy()
    out = blend * low + (1.0 - blend) * wave
    rms_in = max(float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))), 1e-8)
    rms_out = max(float(np.sqrt(np.mean(out.astype(np.float64) ** 2))), 1e-8)
    out = out * (rms_in / rms_out)
    peak = float(np.abs(out).max(initial=0.0))
    return (out / peak if peak > 1.0 else out).astype(np.float32)
