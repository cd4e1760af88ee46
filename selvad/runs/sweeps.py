"""Sweep bookkeeping of the daemon: after each run of a job's `[[sweep]]`, rewrite the
job's sweep summary and comparison figure from the queue's view of the sweep.

A sweep instance is the set of a job's training runs with a sweep id on the same data
(same manifest hash); for each sweep id the newest run counts. Files land in
`<output_root>/<job>/sweep/` (sweep_summary.json, loss_comparison.png); the
recommendation across all finished runs is returned so the daemon can log it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selvad.config.daemon import DaemonConfig
from selvad.runs.queue import Run, RunQueue

__all__ = ["sweep_dir", "sweep_runs", "update_sweep_summary"]

FINAL_STATES = ("done", "failed", "cancelled")


def sweep_dir(cfg: DaemonConfig, job: str) -> Path:
    """Where a job's sweep summary lives."""
    return cfg.paths.output_root / job / "sweep"


def sweep_runs(queue: RunQueue, run: Run) -> list[Run]:
    """The newest run of every sweep id of `run`'s job on the same data, in id order."""
    newest: dict[str, Run] = {}
    for r in sorted(queue.list_runs(job=run.job), key=lambda r: r.created_at):
        if r.kind == "train" and r.sweep_id and r.manifest_hash == run.manifest_hash:
            newest[r.sweep_id] = r
    return [newest[k] for k in sorted(newest)]


def update_sweep_summary(cfg: DaemonConfig, queue: RunQueue, run: Run) -> dict[str, Any] | None:
    """Rewrite the summary of `run`'s sweep; returns {"complete", "recommendation", "path"}
    or None when `run` is not part of a sweep."""
    if run.kind != "train" or not run.sweep_id:
        return None
    from selva_engine.evaluation.sweep import (
        write_sweep_summary,  # numpy/matplotlib: only for sweeps
    )

    runs = sweep_runs(queue, run)
    entries = [{"id": r.sweep_id, "run_id": r.id, "status": r.state, "config": r.config,
                "output_dir": r.output_dir, "error": r.error, "started_at": r.started_at,
                "finished_at": r.finished_at} for r in runs]
    out = sweep_dir(cfg, run.job)
    summary = write_sweep_summary(out, run.job, entries, data_dir=str(run.config.get("data_dir", "")))
    return {"complete": all(r.state in FINAL_STATES for r in runs),
            "recommendation": summary["recommendation"], "path": str(out / "sweep_summary.json")}
