"""Clip inspection: SNR estimate, codec HF shelf, silent fraction, loudness and true peak.

The figures and default thresholds are those of ComfyUI-SelVA's dataset Inspector node, so a
dataset that passes there passes here:

- frames of 2048 samples, hop 512, on the mono mix at the file's own rate; a frame whose RMS
  is below 1e-3 (-60 dBFS) is silent; a clip is "mostly silent" above 50 % silent frames.
  One difference: frames of digital silence (all samples 0) are deliberate padding (the
  seed guide centres a short event in silence) and are not held against the clip; the
  figure `silent_fraction` still counts them, as the node does;
- SNR estimate: 20 log10 of the 95th over the 5th percentile of frame RMS (60 dB when the
  clip is shorter than one frame); below 15 dB is flagged;
- codec HF shelf: mean STFT power (2048-point periodic Hann, hop 512, centred with reflect
  padding) in 1-5 kHz over 15-20 kHz, in dB; above 40 dB the top is cut off as by a lossy
  encoder. Only judged at 32 kHz and above (there is no 15-20 kHz band below);
- clipping: a peak above 0.99.

Besides, for the report: integrated loudness (ITU-R BS.1770-4 with pyloudnorm, LUFS; None for
clips under 0.4 s or silent ones) and true peak (dBTP: the peak of the mix oversampled to at
least 192 kHz with soxr, as BS.1770-4 Annex 2 oversamples 48 kHz by four).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Inspection", "InspectThresholds", "find_issues", "frame_rms", "hf_shelf_db",
           "inspect_mono", "integrated_lufs", "snr_estimate_db", "true_peak_dbtp"]

FRAME = 2048  # samples
HOP = 512  # samples
SILENT_RMS = 1e-3  # -60 dBFS
CODEC_MIN_RATE = 32000  # Hz; below it there is no 15-20 kHz band to judge
LOW_BAND = (1000.0, 5000.0)  # Hz
HIGH_BAND = (15000.0, 20000.0)  # Hz
LUFS_MIN_SECONDS = 0.4  # one BS.1770 gating block
LUFS_RATE = 48000  # Hz; BS.1770's reference rate
TRUE_PEAK_RATE = 192000  # Hz; 4x 48 kHz
STFT_BATCH = 256  # frames transformed at once (bounded memory)


@dataclass(frozen=True)
class InspectThresholds:
    """When a clip is flagged (the Inspector node's defaults) and what flagged clips do.

    `skip_rejected` trains without the flagged clips (the node's own default is to drop
    them; selvad only warns unless asked). `min_lufs` flags a clip quieter than that
    integrated loudness (-40 LUFS: 17 LU under the -23 LUFS the node normalises to).
    """

    min_snr_db: float = 15.0
    check_codec: bool = True
    codec_shelf_db: float = 40.0
    max_silent_fraction: float = 0.5  # 0 disables the check
    clip_peak: float = 0.99
    min_lufs: float = -40.0
    skip_rejected: bool = False


@dataclass(frozen=True)
class Inspection:
    """The figures of one clip; a None figure could not be measured (see the module doc)."""

    peak: float  # sample peak of the mix's channels, full scale = 1.0
    snr_db: float
    silent_fraction: float  # of frames, below -60 dBFS
    padded_fraction: float  # of frames, digital silence (all zero)
    hf_shelf_db: float | None  # 1-5 kHz over 15-20 kHz power; None under 32 kHz
    lufs: float | None  # integrated loudness of the mono mix
    true_peak_dbtp: float | None  # None for digital silence

    def to_dict(self) -> dict[str, float]:
        """The measured figures, rounded for reports (None figures left out)."""
        out = {"peak": round(self.peak, 4), "snr_db": round(self.snr_db, 1),
               "silent_fraction": round(self.silent_fraction, 3),
               "padded_fraction": round(self.padded_fraction, 3)}
        for key in ("hf_shelf_db", "lufs", "true_peak_dbtp"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 1)
        return out


def frame_rms(mono: np.ndarray) -> np.ndarray:
    """RMS of each 2048-sample frame at hop 512 of (L,) samples -> (frames,) float64.

    Computed from exact 512-sample sums of squares (four per frame), so no frame matrix is
    built; empty when L < 2048.
    """
    chunks = mono.shape[0] // HOP
    if mono.shape[0] < FRAME:
        return np.zeros(0)
    energy = np.square(mono[:chunks * HOP].reshape(chunks, HOP), dtype=np.float64).sum(axis=1)
    per = FRAME // HOP
    frames = sum(energy[i:chunks - per + 1 + i] for i in range(per))
    return np.sqrt(frames / FRAME)


def snr_estimate_db(rms: np.ndarray) -> float:
    """20 log10(p95 / p05) of frame RMS (p05 floored at 1e-8); 60 dB without frames."""
    if rms.size == 0:
        return 60.0
    p95, p05 = np.quantile(rms, [0.95, 0.05])
    return float(20.0 * math.log10(p95 / max(p05, 1e-8) + 1e-8))


def hf_shelf_db(mono: np.ndarray, rate: int) -> float | None:
    """Mean STFT power of 1-5 kHz over 15-20 kHz in dB; None below 32 kHz or for silence.

    The STFT is taken in batches of frames, so memory stays at a few MB for any length.
    """
    if rate < CODEC_MIN_RATE or mono.shape[0] <= FRAME // 2:
        return None
    x = np.pad(mono.astype(np.float64), FRAME // 2, mode="reflect")
    n = 1 + (x.shape[0] - FRAME) // HOP
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)  # periodic Hann
    power = np.zeros(FRAME // 2 + 1)
    for start in range(0, n, STFT_BATCH):
        idx = np.arange(start, min(n, start + STFT_BATCH))[:, None] * HOP + np.arange(FRAME)
        power += (np.abs(np.fft.rfft(x[idx] * window, axis=1)) ** 2).sum(axis=0)
    power /= n
    freqs = np.linspace(0.0, rate / 2.0, FRAME // 2 + 1)
    low = power[(freqs >= LOW_BAND[0]) & (freqs < LOW_BAND[1])].mean()
    high_band = (freqs >= HIGH_BAND[0]) & (freqs < HIGH_BAND[1])
    if not high_band.any() or low <= 0.0:
        return None
    return float(10.0 * math.log10(max(low, 1e-12) / max(power[high_band].mean(), 1e-12)))


def integrated_lufs(mono: np.ndarray, rate: int) -> float | None:
    """BS.1770-4 integrated loudness (pyloudnorm) of (L,) samples; None when unmeasurable.

    Above 48 kHz (the rate BS.1770 specifies its filters at) the mix is first resampled to
    48 kHz with soxr: what lies above 24 kHz adds nothing audible, and the meter's memory
    stays that of a 48 kHz clip.
    """
    if mono.shape[0] < LUFS_MIN_SECONDS * rate:
        return None
    import pyloudnorm

    if rate > LUFS_RATE:
        import soxr

        mono, rate = soxr.resample(mono.astype(np.float32), rate, LUFS_RATE, quality="HQ"), LUFS_RATE

    value = float(pyloudnorm.Meter(rate).integrated_loudness(mono.astype(np.float64)))
    return value if math.isfinite(value) else None


def true_peak_dbtp(mono: np.ndarray, rate: int) -> float | None:
    """True peak in dBTP: the sample peak after oversampling to >= 192 kHz (soxr VHQ)."""
    factor = max(1, math.ceil(TRUE_PEAK_RATE / rate))
    if factor > 1:
        import soxr

        up = soxr.resample(mono.astype(np.float32), rate, rate * factor, quality="VHQ")
        peak = float(max(np.abs(up).max(initial=0.0), np.abs(mono).max(initial=0.0)))
    else:
        peak = float(np.abs(mono).max(initial=0.0))
    return 20.0 * math.log10(peak) if peak > 0.0 else None


def inspect_mono(mono: np.ndarray, rate: int, peak: float | None = None) -> Inspection:
    """All figures of a clip's mono mix (L,) at `rate` Hz; `peak` is the channels' sample
    peak when the mix came from several channels (default: the mix's own)."""
    rms = frame_rms(mono)
    silent = float(np.mean(rms < SILENT_RMS)) if rms.size else 0.0
    padded = float(np.mean(rms == 0.0)) if rms.size else 0.0
    return Inspection(
        peak=float(np.abs(mono).max(initial=0.0)) if peak is None else float(peak),
        snr_db=snr_estimate_db(rms), silent_fraction=silent, padded_fraction=padded,
        hf_shelf_db=hf_shelf_db(mono, rate), lufs=integrated_lufs(mono, rate),
        true_peak_dbtp=true_peak_dbtp(mono, rate))


def find_issues(ins: Inspection, th: InspectThresholds) -> list[tuple[str, str, str]]:
    """The flags `th` raises for `ins`: (code, message with the figure, fix) per issue."""
    out = []
    if ins.peak > th.clip_peak:
        out.append(("near-clipping", f"peak {ins.peak:.3f} is above {th.clip_peak:g}: at or "
                    "near clipping", "lower the gain, or loudness-normalise the clip with a "
                    "true-peak limit (e.g. -1 dBTP)"))
    if ins.snr_db < th.min_snr_db:
        out.append(("low-snr", f"estimated SNR {ins.snr_db:.1f} dB is below {th.min_snr_db:g} "
                    "dB (loud over quiet frames): noisy, or a steady sound", "use a cleaner "
                    "recording or denoise it, noise is learned as white noise; for a steady "
                    "sound (rain, an engine) lower min_snr_db in [inspect]"))
    if th.check_codec and ins.hf_shelf_db is not None and ins.hf_shelf_db > th.codec_shelf_db:
        out.append(("codec-shelf", f"15-20 kHz is {ins.hf_shelf_db:.1f} dB below 1-5 kHz "
                    f"(more than {th.codec_shelf_db:g} dB): a lossy source cut the top off",
                    "use the uncompressed original if you have it"))
    quiet = ins.silent_fraction - ins.padded_fraction  # padding with zeros is deliberate
    if 0 < th.max_silent_fraction < quiet:
        out.append(("mostly-silent", f"{quiet:.0%} of frames are below -60 dBFS without being "
                    f"digital silence (more than {th.max_silent_fraction:.0%})", "trim the quiet "
                    "parts, or pad a short event with digital silence (zeros) instead"))
    if ins.lufs is not None and ins.lufs < th.min_lufs:
        out.append(("quiet", f"integrated loudness {ins.lufs:.1f} LUFS is below "
                    f"{th.min_lufs:g} LUFS", "raise its level, or loudness-normalise the "
                    "dataset (e.g. to -23 LUFS, as ComfyUI-SelVA's LUFS Normalizer)"))
    return out
