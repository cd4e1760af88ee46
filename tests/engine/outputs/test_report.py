"""Plots a person reads at a glance: the smoothed loss is an EMA over steps (it follows the
raw loss whatever log_every is), no validation plot without held-out clips, labelled metric
panels with the reference clip's value, and y-axes that do not blow up tiny changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from selva_engine.outputs import report


def _decay(steps: list[int]) -> list[float]:
    return [1.3 + 2.0 * math.exp(-s / 25) for s in steps]


def test_ema_over_steps_follows_the_raw_loss_after_ten_points() -> None:
    steps = list(range(10, 110, 10))
    raw = _decay(steps)
    old = report.ema(raw)[-1]
    new = report.ema_steps(steps, raw, report.smoothing_span(100))[-1]
    assert old - raw[-1] > 0.4  # the per-point EMA still remembers the first loss
    assert abs(new - raw[-1]) < 0.1, (new, raw[-1])


def test_ema_over_steps_does_not_depend_on_log_every() -> None:
    fine = list(range(10, 2010, 10))
    coarse = list(range(50, 2050, 50))
    span = report.smoothing_span(2000)
    a = dict(zip(fine, report.ema_steps(fine, _decay(fine), span), strict=True))
    b = dict(zip(coarse, report.ema_steps(coarse, _decay(coarse), span), strict=True))
    for s in (500, 1000, 2000):
        assert abs(a[s] - b[s]) < 0.02, (s, a[s], b[s])


def test_constant_loss_smooths_to_itself_from_the_first_point() -> None:
    assert report.ema_steps([50, 100, 150], [0.6, 0.6, 0.6], 200) == pytest.approx([0.6] * 3)


def _png(path) -> Image.Image:
    img = Image.open(path)
    img.load()
    assert img.format == "PNG" and img.width > 300 and img.height > 150
    return img


def test_no_validation_plot_without_validation_data(tmp_path) -> None:
    steps = list(range(10, 110, 10))
    paths = report.write_loss_plots(tmp_path, steps, _decay(steps), None, total_steps=100)
    assert sorted(p.name for p in paths) == ["loss_raw.png", "loss_smoothed.png"]
    assert not (tmp_path / "loss_validation.png").exists()
    for p in paths:
        _png(p)
    paths = report.write_loss_plots(tmp_path, steps, _decay(steps),
                                    {"held-out clips": ([50, 100], [1.5, 1.4])}, total_steps=100)
    assert (tmp_path / "loss_validation.png") in paths
    _png(tmp_path / "loss_validation.png")


def test_tiny_changes_do_not_fill_the_axis() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ax = Figure().add_subplot(1, 1, 1)
    ax.plot([1, 2, 3], [1.3000, 1.3004, 1.3007])
    report._sensible_ylim(ax, [1.3000, 1.3004, 1.3007])
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.1 * 1.3 - 1e-9 and lo < 1.3 < 1.3007 < hi
    assert ax.yaxis.get_major_formatter().get_useOffset() is False
    ax2 = Figure().add_subplot(1, 1, 1)
    ax2.plot([1, 2], [0.2, 1.4])
    report._sensible_ylim(ax2, [0.2, 1.4])  # a real change keeps matplotlib's own limits
    assert ax2.get_ylim()[0] < 0.2 and ax2.get_ylim()[1] > 1.4


def test_metric_plot_has_labels_reference_and_direction(tmp_path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    seen: list = []
    real_savefig = Figure.savefig

    def spy(self, *a, **kw):
        seen.append(self)
        return real_savefig(self, *a, **kw)

    monkeypatch.setattr(Figure, "savefig", spy)
    metrics = [{"hf_energy_ratio": 0.31, "log_spectral_distance_db": 9.0},
               {"hf_energy_ratio": 0.3107, "log_spectral_distance_db": 7.5}]
    path = report.write_metric_plot(tmp_path / "metrics.png", [50, 100], metrics,
                                    reference={"hf_energy_ratio": 0.12})
    _png(path)
    axes = seen[0].axes
    titles = [ax.get_title() for ax in axes]
    assert any("hf_energy_ratio" in t and "closer to the reference is better" in t for t in titles)
    assert any("log_spectral_distance_db" in t and "lower is better" in t for t in titles)
    assert all(ax.get_xlabel() == "step" and ax.get_ylabel() for ax in axes)
    hf = next(ax for ax in axes if "hf_energy_ratio" in ax.get_title())
    ref_lines = [ln for ln in hf.get_lines() if ln.get_label() == "reference clip"]
    assert ref_lines and np.allclose(ref_lines[0].get_ydata(), 0.12)
    lo, hi = hf.get_ylim()
    assert lo <= 0.12 and hi >= 0.3107
