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

__all__ = ["ema", "ema_steps", "loudness_normalize", "plot_curves", "smoothing_span",
           "write_loss_plots", "write_meta", "write_metric_plot", "write_wav"]

EMA_BETA = 0.9
MAX_SMOOTH_SPAN = 200  # steps: the smoothed curve never lags more than this
MIN_REL_YSPAN = 0.1  # a y-axis spans at least 10 % of its values' magnitude


def ema(values: Sequence[float], beta: float = EMA_BETA) -> list[float]:
    """Exponential moving average over points: s0 = v0, s <- beta*s + (1-beta)*v (sweep plots
    of runs logged at the same interval; training curves use `ema_steps`)."""
    out: list[float] = []
    for v in values:
        out.append(float(v) if not out else beta * out[-1] + (1 - beta) * float(v))
    return out


def smoothing_span(total_steps: int) -> int:
    """Time constant (steps) of the smoothed loss: a 20th of the run, 10 to 200 steps, so a
    short run is not dominated by its first loss and a long one still shows the trend."""
    return int(min(MAX_SMOOTH_SPAN, max(10, total_steps // 20)))


def ema_steps(steps: Sequence[int], values: Sequence[float], span: float) -> list[float]:
    """EMA over training steps, not over log points: a value logged for the steps since the
    previous point (each mean of `gap` steps) decays by exp(-gap/span), so the curve's lag is
    `span` steps whatever log_every is. Debiased (a weighted mean of the points seen so far),
    so the start is not pinned to the first value."""
    out: list[float] = []
    num = den = 0.0
    prev = 0
    for step, v in zip(steps, values, strict=True):
        gap = max(1, int(step) - prev) if out else max(1, int(step))
        prev = int(step)
        a = float(np.exp(-gap / max(span, 1e-9)))
        num = a * num + (1 - a) * float(v)
        den = a * den + (1 - a)
        out.append(num / den)
    return out


def _sensible_ylim(ax: Any, values: Sequence[float]) -> None:
    """Plain tick labels (no offset or 1e-3 multiplier) and a y range of at least 10 % of the
    values' magnitude, so a change of 0.0007 on 1.3 draws flat instead of as a cliff."""
    ax.ticklabel_format(axis="y", style="plain", useOffset=False)
    finite = [float(v) for v in values if np.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    need = MIN_REL_YSPAN * max(abs(lo), abs(hi))
    if need > 0 and hi - lo < need:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - need / 2, mid + need / 2)


def _figure_png(series: list[tuple[str, Sequence[int], Sequence[float]]], title: str, ylabel: str,
                log_y: bool = False, legend: bool = False) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, steps, values in series:
        if len(steps):
            faint = label.startswith("raw")  # the raw loss behind its smoothed curve
            ax.plot(list(steps), list(values), label=label, markersize=3,
                    marker="o" if len(steps) < 30 and not faint else None,
                    color="0.75" if faint else None, linewidth=0.8 if faint else 1.5)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_y and all(v > 0 for _, _, vals in series for v in vals):
        ax.set_yscale("log")
    else:
        _sensible_ylim(ax, [v for _, _, vals in series for v in vals])
    ax.grid(True, alpha=0.3)
    if (legend or len(series) > 1) and ax.get_legend_handles_labels()[0]:
        ax.legend()  # (a resumed run with no history yet has nothing to label)
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
                     val: dict[str, tuple[Sequence[int], Sequence[float]]] | None = None, *,
                     total_steps: int | None = None) -> list[Path]:
    """loss_raw.png, loss_smoothed.png (an EMA over `smoothing_span(total_steps)` steps, the
    raw loss faint behind it) and, when `val` has points, loss_validation.png (the caller
    passes `val` only when the run has held-out clips). Returns the paths written."""
    out_dir = Path(out_dir)
    span = smoothing_span(total_steps if total_steps else (int(steps[-1]) if len(steps) else 0))
    lower = "lower is better"
    paths = [
        plot_curves(out_dir / "loss_raw.png", [("loss", steps, losses)],
                    title=f"training loss (raw, mean per log interval; {lower})"),
        plot_curves(out_dir / "loss_smoothed.png",
                    [("raw", steps, losses), (f"EMA over ~{span} steps", steps,
                                              ema_steps(steps, losses, span))],
                    title=f"training loss (smoothed; flat for 2000+ steps = converged; {lower})"),
    ]
    if val and any(len(s) for s, _ in val.values()):
        paths.append(plot_curves(out_dir / "loss_validation.png",
                                 [(name, s, v) for name, (s, v) in val.items()],
                                 title="fixed-noise loss at checkpoints (lower is better; "
                                 "held-out rising = overfitting)", legend=True))
    return paths


METRIC_PANELS = ("hf_energy_ratio", "spectral_centroid_hz", "spectral_flatness", "temporal_variance",
                 "log_spectral_distance_db", "mel_cepstral_distortion")
# metric -> (y-axis label, which way is better); "closer" means closer to the reference clip.
METRIC_AXES = {
    "hf_energy_ratio": ("energy above 4 kHz (fraction)", "closer to the reference is better; "
                        "far above = hiss"),
    "spectral_centroid_hz": ("spectral centroid (Hz)", "closer to the reference is better"),
    "spectral_flatness": ("flatness (1 = white noise)", "closer to the reference is better"),
    "temporal_variance": ("RMS std / mean", "closer to the reference is better"),
    "log_spectral_distance_db": ("distance to reference (dB)", "lower is better"),
    "mel_cepstral_distortion": ("distortion vs reference (dB)", "lower is better"),
}


def write_metric_plot(path: Path | str, steps: Sequence[int], metrics: Sequence[dict],
                      reference: dict[str, float] | None = None) -> Path:
    """metrics.png: one panel per spectral metric of the checkpoint samples over steps, each
    with axis labels, which direction is better in its title, and the reference clip's own
    value (`reference`, when given) as a dashed line. Writes atomically; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    names = [n for n in METRIC_PANELS if any(n in m for m in metrics)]
    fig = Figure(figsize=(11, 2.6 * max(1, (len(names) + 1) // 2)), dpi=100)
    for k, name in enumerate(names):
        ax = fig.add_subplot((len(names) + 1) // 2, 2, k + 1)
        pts = [(s, m[name]) for s, m in zip(steps, metrics, strict=True) if name in m]
        ylabel, better = METRIC_AXES[name]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label="sample")
        shown = [p[1] for p in pts]
        ref = (reference or {}).get(name)
        if ref is not None and np.isfinite(ref):
            ax.axhline(ref, color="tab:green", linestyle="--", linewidth=1, label="reference clip")
            ax.legend(fontsize=7, loc="best")
            shown.append(ref)
        _sensible_ylim(ax, shown)
        ax.set_title(f"{name} ({better})", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
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
