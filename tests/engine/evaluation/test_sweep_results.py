"""A run's loss figures in the sweep summary are the ones status, the page and the terminal
show: the trainer's own smoothed training loss, and the best held-out loss beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selva_engine.evaluation.sweep import run_results


def _progress(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "progress.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_final_and_lowest_loss_are_the_trainers_smoothed_loss(tmp_path: Path) -> None:
    records = [{"event": "progress", "step": s, "loss": raw, "smoothed_loss": sm}
               for s, raw, sm in ((10, 0.9, 0.80), (20, 0.2, 0.55), (30, 0.7, 0.60))]
    records.insert(2, {"event": "checkpoint", "step": 20, "val_loss": 0.42, "path": "a.pt"})
    records.append({"event": "checkpoint", "step": 30, "val_loss": 0.47, "path": "b.pt"})
    _progress(tmp_path / "run", records)
    res = run_results(tmp_path / "run")
    assert res["final_loss"] == 0.60 and res["min_loss"] == 0.55 and res["min_loss_step"] == 20
    assert res["best_val_loss"] == 0.42
    assert res["loss_history"]["smoothed"] == [0.80, 0.55, 0.60]


def test_runs_logged_without_a_smoothed_loss_fall_back_to_an_ema(tmp_path: Path) -> None:
    _progress(tmp_path / "old", [{"event": "progress", "step": s, "loss": v}
                                 for s, v in ((10, 1.0), (20, 0.0))])
    res = run_results(tmp_path / "old")
    assert res["final_loss"] == pytest.approx(res["loss_history"]["smoothed"][-1])
    assert 0.0 < res["final_loss"] < 1.0 and res["best_val_loss"] is None
