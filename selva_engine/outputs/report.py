"""Run reports: loss plots (raw, EMA-smoothed, validation), meta.json, sample .wav files.

Plots are matplotlib figures rendered with the Agg backend and written atomically; the step
axis comes from the recorded history, so it stays right after a resume.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from selva_engine.io import atomic_write_bytes, atomic_write_json

__all__ = ["ema", "loudness_normalize", "plot_curves", "write_loss_plots", "write_meta",
           "write_metric_plot", "write_wav"]

EMA_BETA = 0.9


def ema(values: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """Exponential moving average s0 = v0, s <- beta*s + (1-beta)*v."""
    out: list[float] = []
    for v in values:
        out.append(float(v) if not out else beta * out[-1] + (1 - beta) * float(v))
    return out


def _figure_png(series: list[tuple[str, Sequence[int], Sequence[float]]], title: str, ylabel: str,
                log_y: bool = False, legend: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, steps, values in series:
        if len(steps):
            ax.plot(list(steps), list(values), label=label, marker="o" if len(steps) < 30 else None,
                    markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y and all(v > 0 for _, _, vals in series for v in vals):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if legend or len(series) > 1:
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_curves(path: Path | str, series: list[tuple[str, Sequence[int], Sequence[float]]], *,
                title: str, ylabel: str = "loss", legend: bool = False) -> Path:
    """Write a line plot of (label, steps, values) series to `path` (PNG, atomic); the
    legend is drawn for several series or when `legend` is set."""
    return atomic_write_bytes(path, _figure_png(series, title, ylabel, legend=legend))


def write_loss_plots(out_dir: Path | str, steps: Sequence[int], losses: Sequence[float],
                     val: dict[str, tuple[Sequence[int], Sequence[float]]] | None = None) -> list[Path]:
    """loss_raw.png, loss_smoothed.png and (with validation data) loss_validation.png."""
    out_dir = Path(out_dir)
    paths = [
        plot_curves(out_dir / "loss_raw.png", [("loss", steps, losses)], title="training loss (raw)"),
        plot_curves(out_dir / "loss_smoothed.png", [("EMA 0.9", steps, ema(losses))],
                    title="training loss (EMA-smoothed)"),
    ]
    if val and any(len(s) for s, _ in val.values()):
        paths.append(plot_curves(out_dir / "loss_validation.png",
                                 [(name, s, v) for name, (s, v) in val.items()],
                                 title="fixed-noise loss at checkpoints", legend=True))
    return paths


METRIC_PANELS = ("hf_energy_ratio", "spectral_centroid_hz", "spectral_flatness", "temporal_variance",
                 "log_spectral_distance_db", "mel_cepstral_distortion")


def write_metric_plot(path: Path | str, steps: Sequence[int], metrics: Sequence[dict]) -> Path:
    """metrics.png: one panel per spectral metric of the checkpoint samples over steps."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = [n for n in METRIC_PANELS if any(n in m for m in metrics)]
    fig = Figure(figsize=(10, 2.2 * max(1, (len(names) + 1) // 2)), dpi=100)
    for k, name in enumerate(names):
        ax = fig.add_subplot((len(names) + 1) // 2, 2, k + 1)
        pts = [(s, m[name]) for s, m in zip(steps, metrics, strict=True) if name in m]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(path, buf.getvalue())


def write_meta(out_dir: Path | str, meta: dict[str, Any]) -> Path:
    """meta.json next to the adapters (indented JSON, atomic)."""
    return atomic_write_json(Path(out_dir) / "meta.json", meta)


def loudness_normalize(wave: np.ndarray, target_dbfs: float = -27.0) -> np.ndarray:
    """Scale to an RMS of `target_dbfs`, then divide by the peak if it exceeds 1."""
    wave = np.asarray(wave, dtype=np.float32)
    rms = float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))) if wave.size else 0.0
    if rms > 1e-9:
        wave = wave * (10 ** (target_dbfs / 20) / rms)
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    if peak > 1.0:
        wave = wave / peak
    return wave.astype(np.float32)


def write_wav(path: Path | str, wave: np.ndarray, sampling_rate: int) -> Path:
    """Write mono float audio as 16-bit PCM WAV (atomic)."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wave, dtype=np.float32), -1, 1), sampling_rate,
             format="WAV", subtype="PCM_16")
    return atomic_write_bytes(path, buf.getvalue())
