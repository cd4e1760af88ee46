"""Spectrogram pictures of samples: `sample_stepNNNNN.png` beside `sample_stepNNNNN.wav`.

A log-mel spectrogram (Hann window of ~46 ms, hop ~12 ms, 128 triangular mel bands from 0 Hz
to Nyquist) drawn with matplotlib's Agg backend: time in seconds across, frequency in Hz on a
mel axis up, level in dB relative to full scale. The colour scale is fixed (`DB_RANGE`), not
fitted to each clip, so the pictures of every checkpoint and of the reference clip (all at
the same loudness, see report.loudness_normalize) can be compared by eye.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from selva_engine.io import atomic_write_bytes

__all__ = ["DB_RANGE", "log_mel", "spectrogram_png", "write_spectrogram"]

DB_RANGE = (-100.0, -20.0)  # dBFS: the colour scale of every picture (below: darkest)
N_MELS = 128
WINDOW_S = 0.046  # seconds: the STFT window (2048 samples at 44.1 kHz, 736 at 16 kHz)
HOP_S = 0.0116  # seconds between frames
PALETTE_COLOURS = 64
TICKS_HZ = (100, 500, 1000, 2000, 5000, 10000, 20000)


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def _hz(mel: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def log_mel(wave: np.ndarray, sampling_rate: int) -> np.ndarray:
    """(N_MELS, frames) mel band levels in dBFS of mono float audio `wave` (full scale 1.0):
    a full-scale sine reads about 0 dB in its band. Silence is floored at -200 dB."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    n_fft = max(64, int(round(WINDOW_S * sampling_rate)))
    hop = max(16, int(round(HOP_S * sampling_rate)))
    if wave.size < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.size))
    window = np.hanning(n_fft)
    frames = np.lib.stride_tricks.sliding_window_view(wave, n_fft)[::hop] * window  # (T, n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 * (2.0 / window.sum()) ** 2  # (T, bins)
    bins_hz = np.fft.rfftfreq(n_fft, 1.0 / sampling_rate)
    edges = _hz(np.linspace(0.0, float(_mel(sampling_rate / 2)), N_MELS + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fb = np.maximum(0.0, np.minimum((bins_hz - lo) / (mid - lo), (hi - bins_hz) / (hi - mid)))
    return 10.0 * np.log10(np.maximum(fb @ power.T, 1e-20))  # (N_MELS, T)


def spectrogram_png(wave: np.ndarray, sampling_rate: int, title: str = "") -> bytes:
    """The PNG bytes of `wave`'s log-mel spectrogram (440 x 190 pixels)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    levels = log_mel(wave, sampling_rate)
    seconds = np.asarray(wave).size / sampling_rate
    top = float(_mel(sampling_rate / 2))
    fig = Figure(figsize=(4.4, 1.9), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(levels, origin="lower", aspect="auto", cmap="magma",
                      vmin=DB_RANGE[0], vmax=DB_RANGE[1], extent=(0.0, seconds, 0.0, top),
                      interpolation="nearest")
    ticks = [f for f in TICKS_HZ if f < sampling_rate / 2]
    ax.set_yticks([float(_mel(f)) for f in ticks],
                  [f"{f // 1000}k" if f >= 1000 else str(f) for f in ticks])
    ax.set_xlabel("time (s)", fontsize=8)
    ax.set_ylabel("frequency (Hz)", fontsize=8)
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=8)
    bar = fig.colorbar(image, ax=ax, pad=0.02, fraction=0.05)
    bar.set_label("dBFS", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    fig.tight_layout(pad=0.3)
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    # 64 colours: a fifth of the bytes of full colour and no visible difference
    picture = Image.open(io.BytesIO(buf.getvalue())).convert("RGB").quantize(PALETTE_COLOURS)
    buf = io.BytesIO()
    picture.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_spectrogram(path: Path | str, wave: np.ndarray, sampling_rate: int,
                      title: str = "") -> Path:
    """Write `wave`'s spectrogram picture to `path` (PNG, atomic); returns the path."""
    return atomic_write_bytes(path, spectrogram_png(wave, sampling_rate, title))
