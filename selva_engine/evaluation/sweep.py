"""Sweep summaries: several runs of one job (its `[[sweep]]` entries) compared side by side.

`write_sweep_summary(sweep_dir, name, runs)` reads each run's output directory
(progress.jsonl, meta.json) and writes `sweep_summary.json` (per run: config, status,
final / min smoothed loss and its step, loss at each checkpoint, validation loss, sample
metrics, adapter paths, duration, plus system info and a recommendation across every
checkpoint of every finished run) and `loss_comparison.png` (smoothed training curves and
the held-out validation curves). It is rewritten after each run of the sweep.
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from selva_engine.evaluation.recommend import Candidate, recommend
from selva_engine.io import atomic_write_json
from selva_engine.outputs.report import ema, plot_curves

__all__ = ["read_progress", "run_results", "system_info", "write_sweep_summary"]


def read_progress(run_dir: Path | str) -> tuple[list[dict], list[dict]]:
    """(progress lines, checkpoint lines) of a run's progress.jsonl; torn lines are skipped."""
    progress, checkpoints = [], []
    path = Path(run_dir) / "progress.jsonl"
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            (checkpoints if rec.get("event") == "checkpoint" else progress).append(rec)
    # a resumed run may repeat steps it had logged before the interruption: keep the last
    by_step = {r["step"]: r for r in progress if "step" in r}
    return [by_step[s] for s in sorted(by_step)], checkpoints


def run_results(run_dir: Path | str) -> dict[str, Any]:
    """Loss and checkpoint figures of one run directory (empty values when it has none)."""
    run_dir = Path(run_dir)
    progress, checkpoints = read_progress(run_dir)
    steps = [r["step"] for r in progress]
    losses = [float(r["loss"]) for r in progress]
    # the trainer's own smoothed loss (what status, the page and the terminal show), else,
    # for runs logged before it was recorded, an EMA over the log points
    logged = [r.get("smoothed_loss") for r in progress]
    smoothed = ([float(v) for v in logged] if all(isinstance(v, (int, float)) for v in logged)
                else ema(losses))
    out: dict[str, Any] = {"loss_history": {"step": steps, "loss": losses, "smoothed": smoothed},
                           "log_interval": steps[0] if steps else None}
    if smoothed:
        k = int(np.argmin(smoothed))
        quarter = losses[len(losses) - max(1, len(losses) // 4):]
        out.update(final_loss=smoothed[-1], min_loss=smoothed[k], min_loss_step=steps[k],
                   loss_std_last_quarter=float(np.std(quarter)))
    at = {}
    for c in checkpoints:
        prior = [s for s, st in zip(smoothed, steps, strict=True) if st <= c["step"]]
        at[str(c["step"])] = prior[-1] if prior else None
    out["loss_at_steps"] = at
    out["validation_loss"] = {str(c["step"]): c.get("val_loss") for c in checkpoints}
    held_out = [v for v in out["validation_loss"].values() if isinstance(v, (int, float))]
    out["best_val_loss"] = min(held_out) if held_out else None  # what picks adapter_best.pt
    out["train_fixed_loss"] = {str(c["step"]): c.get("train_fixed_loss") for c in checkpoints}
    out["spectral_metrics"] = {str(c["step"]): c.get("metrics", {}) for c in checkpoints}
    out["checkpoints"] = {str(c["step"]): c.get("path") for c in checkpoints}
    meta_path = run_dir / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    out["reference_metrics"] = meta.get("sample_reference_metrics", {})
    out["system"] = meta.get("system")
    out["run_recommendation"] = meta.get("recommendation")
    for name, key in (("adapter_final.pt", "adapter_path"), ("adapter_best.pt", "best_adapter_path")):
        out[key] = str(run_dir / name) if (run_dir / name).is_file() else None
    return out


def system_info() -> dict[str, Any]:
    """torch / CUDA / GPU facts (recorded by the trainer in meta.json, read by sweeps)."""
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch_version": torch.__version__,
                            "cuda_version": torch.version.cuda, "gpu_name": None, "gpu_vram_gb": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu_name=props.name, gpu_vram_gb=round(props.total_memory / 2**30, 1))
    return info


def write_sweep_summary(sweep_dir: Path | str, name: str, runs: list[dict[str, Any]],
                        description: str = "", data_dir: str = "") -> dict[str, Any]:
    """Write sweep_summary.json and loss_comparison.png for `runs`; returns the summary.

    Each run dict needs `id` (the sweep entry id), `status`, `config` and `output_dir`, and
    may carry `run_id`, `error`, `started_at`, `finished_at` (unix seconds).
    """
    sweep_dir = Path(sweep_dir)
    experiments, series, candidates, ref_hf = [], [], [], []
    overfit = False
    for run in runs:
        res = run_results(run["output_dir"]) if run.get("output_dir") else {}
        started, finished = run.get("started_at"), run.get("finished_at")
        exp = {"id": run["id"], "run_id": run.get("run_id"), "status": run["status"],
               "config": run.get("config", {}), "output_dir": run.get("output_dir"),
               "error": run.get("error"),
               "duration_seconds": (finished - started) if started and finished else None,
               "results": res}
        experiments.append(exp)
        hist = res.get("loss_history", {})
        if hist.get("step"):
            series.append((f"{run['id']} (train, EMA)", hist["step"], hist["smoothed"]))
        val = {int(s): v for s, v in res.get("validation_loss", {}).items() if v is not None}
        if val:
            series.append((f"{run['id']} (validation)", sorted(val), [val[s] for s in sorted(val)]))
        if run["status"] == "done":
            if res.get("reference_metrics", {}).get("hf_energy_ratio") is not None:
                ref_hf.append(res["reference_metrics"]["hf_energy_ratio"])
            overfit |= "overfits" in ((res.get("run_recommendation") or {}).get("reason") or "")
            for s, path in res.get("checkpoints", {}).items():
                candidates.append(Candidate(f"{run['id']}@{s}", path, int(s),
                                            res["validation_loss"].get(s), res["train_fixed_loss"].get(s),
                                            res["spectral_metrics"].get(s, {})))
    rec = recommend(candidates, reference_hf=float(np.mean(ref_hf)) if ref_hf else None, overfitting=overfit)
    # the trainers recorded the machine they ran on; the daemon itself never imports torch
    system = next((e["results"]["system"] for e in experiments if e["results"].get("system")),
                  {"python": platform.python_version()})
    summary = {
        "sweep_name": name, "description": description, "data_dir": data_dir,
        "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "system": system, "experiments": experiments, "recommendation": rec.to_dict(),
    }
    atomic_write_json(sweep_dir / "sweep_summary.json", summary)
    if series:
        plot_curves(sweep_dir / "loss_comparison.png", series, title=f"sweep {name}: loss by run")
    return summary
