"""Run directories: where a run's files go, and the files the daemon writes there itself.

Training runs write into `<output_root>/<job>/<run-id>/` (`run.toml`, `validation.toml`,
`worker.log` and the trainer's files); `<output_root>/<job>/latest` points at the newest
started run. Every run also has a private `<state_dir>/runs/<run-id>/` for its child's JSON
config and pid file (extraction runs keep their `worker.log` there too).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import tomli_w

from selva_engine.data.augment_file import read_augment_settings
from selva_engine.data.prepare_file import read_prepare_settings
from selva_engine.training.options import TrainConfig
from selvad.config.daemon import DaemonConfig
from selvad.runs.queue import Run

__all__ = [
    "atomic_write",
    "child_device",
    "describe_start_error",
    "prune_job_runs",
    "run_config",
    "run_dir_for",
    "state_dir_for",
    "update_latest",
    "write_run_toml",
]


def run_dir_for(cfg: DaemonConfig, run: Run) -> Path:
    """Output directory of a training run: `<output_root>/<job>/<run-id>/`."""
    return cfg.paths.output_root / run.job / run.id


def state_dir_for(cfg: DaemonConfig, run: Run) -> Path:
    """Private per-run directory `<state_dir>/runs/<run-id>/` (child config, pid, logs)."""
    return cfg.paths.state_dir / "runs" / run.id


def child_device(name: str) -> tuple[str, dict[str, str]]:
    """Map the daemon's device name to (TrainConfig.device, extra child environment).

    "cuda:N" becomes device "cuda" with CUDA_VISIBLE_DEVICES=N, so the child sees exactly
    one GPU; "auto", "cpu" and "cuda" pass through unchanged with no extra variables.
    """
    if name.startswith("cuda:"):
        return "cuda", {"CUDA_VISIBLE_DEVICES": name[5:]}
    return name, {}


def run_config(run: Run, cfg: DaemonConfig, output_dir: Path,
               device: str | None = None) -> TrainConfig:
    """The TrainConfig a child trains with: the queued config, with the daemon-owned fields
    (output dir, weights, shared cache, device: `device`, the run's slot, or the single
    `[device] name`) taken from the current daemon config and `resume="latest"` (a fresh
    run directory has no checkpoint, so it starts at step 0)."""
    base = TrainConfig.from_dict(run.config)
    if device is None:
        device, _ = child_device(cfg.device.name[0])
    return replace(base, output_dir=str(output_dir), selva_dir=str(cfg.paths.weights_dir or ""),
                   cache_dir=str(cfg.paths.effective_cache_dir), device=device, resume="latest")


def _toml_safe(d: dict[str, Any]) -> dict[str, Any]:
    # TOML has no null: job files write "auto" for the options whose None means automatic.
    return {k: ("auto" if v is None else v) for k, v in d.items()}


def write_run_toml(path: Path, run: Run, train_cfg: TrainConfig) -> Path:
    """Write `run.toml`: a `[run]` table (id, job, sweep, dataset, hashes, attempt), the
    resolved `[config]` (None written as "auto") and `[[files]]`, the dataset files the run
    was queued with (name, size, sha256: its manifest; a change to the dataset queues a
    newer run instead), and `[prepare]`: the audio preparation steps applied, with their
    settings ({"steps": []} when none), and `[augment]`: the variants made of the training
    clips ({"enabled": false} when none). Atomic (temp file + rename); returns path."""
    doc = {
        "run": {"id": run.id, "job": run.job, "sweep_id": run.sweep_id, "dataset": run.dataset,
                "kind": run.kind, "priority": run.priority, "config_hash": run.config_hash,
                "manifest_hash": run.manifest_hash, "attempt": run.attempts,
                "files": len(run.manifest.get("files", []))},
        "config": _toml_safe(train_cfg.to_dict()),
        # what the child applies: dataset.toml's [prepare] with the job's values over it
        "prepare": read_prepare_settings(train_cfg.data_dir, train_cfg.prepare_settings)[0].applied(),
        "augment": read_augment_settings(train_cfg.data_dir, train_cfg.augment_settings)[0].applied(),
        "files": [{k: f[k] for k in ("name", "size", "sha256") if f.get(k) is not None}
                  for f in run.manifest.get("files", [])],
    }
    atomic_write(path, tomli_w.dumps(doc))
    return path


def describe_start_error(exc: BaseException) -> str:
    """One sentence with the fix for why a run could not start: an OSError writing its run
    or state directory (read-only, not ours, read-only file system, full) names the path
    and what to do instead of a raw errno; anything else is its own message."""
    if not isinstance(exc, OSError) or exc.errno is None:
        return str(exc)
    where = Path(exc.filename) if exc.filename else None
    target = f"{where.parent if where and not where.is_dir() else where}" if where else "it"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return (f"cannot write {where or 'the run directory'} (permission denied); make {target} "
                "writable by the user selvad runs as (chown/chmod u+w), or remove it so it is "
                "made again, then `selvad retry` the run")
    if exc.errno == errno.EROFS:
        return (f"cannot write {where or 'the run directory'}: its file system is mounted "
                "read-only; remount it read-write or point paths.output_root elsewhere, then "
                "`selvad retry` the run")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"cannot write {where or 'the run directory'}: no space left; free space "
                "(older runs, checkpoints) and `selvad retry` the run")
    return f"cannot write {where or 'the run directory'} ({exc.strerror or exc})"


def atomic_write(path: Path, text: str) -> None:
    """Replace `path` with UTF-8 `text` atomically (temp file in the same dir + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def update_latest(job_dir: Path, run_id: str) -> Path:
    """Atomically point `<job_dir>/latest` at `run_id` (a relative symlink); returns it."""
    link = job_dir / "latest"
    tmp = job_dir / f".latest.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(run_id, tmp)
    os.replace(tmp, link)
    return link




def prune_job_runs(cfg: DaemonConfig, job: str, finished_ids: set[str], keep: int) -> list[Path]:
    """Delete the oldest finished run directories of `job` beyond the newest `keep`.

    Only directories named in `finished_ids` (runs that are done/failed/cancelled) are
    candidates, so a queued or running run's directory is never touched; run ids sort by
    time. `keep` <= 0 keeps everything. Returns the deleted directories.
    """
    job_dir = cfg.paths.output_root / job
    if keep <= 0 or not job_dir.is_dir():
        return []
    dirs = sorted(p for p in job_dir.iterdir()
                  if p.is_dir() and not p.is_symlink() and p.name in finished_ids)
    doomed = dirs[: max(len(dirs) - keep, 0)]
    for d in doomed:
        shutil.rmtree(d, ignore_errors=True)
    return doomed
