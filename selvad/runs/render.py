"""Render runs: the videos of `<render_root>/<job>/`, rendered with the job's adapter.

A video dropped into a job's render folder becomes a queued run of kind `render` (see
selvad.service.renders); its config holds the folder's settings (`render.toml`,
selvad.config.render) and the prompt, its manifest the video's content hash. Which adapter it
uses is decided when it starts (`choose_adapter`), so a newer recommendation never re-queues
a finished render: `selvad enqueue JOB --render` (or the page's button) does.

The adapter: `render.toml`'s `adapter` file (inside the render folder or the output root),
else the checkpoint of `run`/`step`, else the job's recommendation (the sweep summary's for a
job with `[[sweep]]`, else the newest finished run's `meta.json`), at the middle of its strength
range; a recommendation whose checkpoint is gone falls back to `adapter_final.pt`. While the
job has no finished training run the render waits (queued, with a note).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selva_engine.video.probe import VIDEO_SUFFIXES, output_stems
from selvad.config.daemon import DaemonConfig
from selvad.runs.queue import Run, RunQueue
from selvad.runs.rundir import run_dir_for

__all__ = ["RENDERS_DIR", "Choice", "RenderProblem", "choose_adapter", "folder_videos", "output_names", "render_folder",
           "render_spec", "renders_dir"]

RENDERS_DIR = "renders"
FINAL_ADAPTER = "adapter_final.pt"


class RenderProblem(ValueError):
    """A render cannot start: the message is one sentence with the fix."""


@dataclass(frozen=True)
class Choice:
    """The adapter a render uses, its strength, and the record of why (for render.toml)."""

    adapter: Path | None
    strength: float
    used: dict[str, Any] = field(default_factory=dict)


def render_folder(cfg: DaemonConfig, job: str) -> Path | None:
    """`<render_root>/<job>` (None without `[paths] render_root`)."""
    root = cfg.paths.render_root
    return None if root is None else root / job


def renders_dir(cfg: DaemonConfig, job: str) -> Path:
    """Where a job's renders are written: `<output_root>/<job>/renders`."""
    return cfg.paths.output_root / job / RENDERS_DIR


def folder_videos(folder: Path) -> list[Path]:
    """The videos of a render folder: regular files (not links) with a video suffix, no
    dotfiles or editor temporaries, sorted by name."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [p for p in entries if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith((".", "~"))
            and not p.is_symlink() and p.is_file()]


def output_names(videos: list[Path]) -> dict[Path, str]:
    """Each video's output stem, as auditions and `selva-eval --videos` name theirs: its stem,
    `_2`, `_3` ... where stems repeat (`street.mov` and `street.mp4` render to `street.*` and
    `street_2.*`, never over each other)."""
    return dict(zip(videos, output_stems(videos), strict=True))


def _middle(rec: dict[str, Any] | None) -> float | None:
    rng = (rec or {}).get("strength_range")
    if isinstance(rng, list) and len(rng) == 2 and all(isinstance(x, int | float) for x in rng):
        return round((rng[0] + rng[1]) / 2, 3)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _inside(path: Path, *roots: Path) -> bool:
    real = path.resolve()
    return any(real.is_relative_to(r.resolve()) for r in roots)


def _trained_runs(queue: RunQueue, job: str) -> list[Run]:
    """The job's finished training runs, newest first."""
    runs = [r for r in queue.list_runs(job=job, states=["done"]) if r.kind == "train"]
    return sorted(runs, key=lambda r: (r.finished_at or 0.0, r.id), reverse=True)


def _run_dir(cfg: DaemonConfig, run: Run) -> Path:
    return Path(run.output_dir) if run.output_dir else run_dir_for(cfg, run)


def _sweep_pick(cfg: DaemonConfig, job: str, runs: list[Run]) -> tuple[Run, Path, dict] | None:
    """The sweep summary's recommended run and checkpoint, when the job has a sweep."""
    summary = _read_json(cfg.paths.output_root / job / "sweep" / "sweep_summary.json")
    rec = summary.get("recommendation") or {}
    sweep_id, _, step = str(rec.get("id") or "").partition("@")
    exp = next((e for e in summary.get("experiments", []) if e.get("id") == sweep_id), None)
    run = next((r for r in runs if exp and r.id == exp.get("run_id")), None)
    if run is None or not step.isdigit():
        return None
    return run, _run_dir(cfg, run) / f"adapter_step{int(step):05d}.pt", rec


def _from_runs(cfg: DaemonConfig, queue: RunQueue, render: Run, settings: dict[str, Any]) -> Choice | None:
    """The checkpoint `run`/`step` name, else the recommendation; None while no run is done."""
    runs = _trained_runs(queue, render.job)
    wanted = settings.get("run") or ""
    if wanted:
        runs = [r for r in runs if r.id == wanted]
        if not runs:
            raise RenderProblem(f"render.toml names run {wanted}, which is no finished training run of job "
                                f"{render.job}; `selvad runs {render.job}` lists them")
    if not runs:
        return None
    picked = None if wanted else _sweep_pick(cfg, render.job, runs)
    if picked is None:
        run_dir = _run_dir(cfg, runs[0])
        rec = _read_json(run_dir / "meta.json").get("recommendation") or {}
        picked = (runs[0], run_dir / str(rec.get("id") or FINAL_ADAPTER), rec)
    run, path, rec = picked
    used: dict[str, Any] = {"run": run.id, "chosen_by": "the job's recommendation", "reason": rec.get("reason")}
    if settings.get("step") is not None:
        path = _run_dir(cfg, run) / f"adapter_step{int(settings['step']):05d}.pt"
        used["chosen_by"] = f"render.toml: step {settings['step']}"
        if not path.is_file():
            raise RenderProblem(f"run {run.id} has no checkpoint at step {settings['step']} ({path} is gone "
                                "or was never written); name a step it kept in render.toml")
    elif not path.is_file():
        path, used["chosen_by"] = _run_dir(cfg, run) / FINAL_ADAPTER, "the final adapter (no recommended checkpoint)"
    if not path.is_file():
        raise RenderProblem(f"run {run.id} of job {render.job} has no adapter file ({path}); name another "
                            "run or an adapter file in render.toml")
    used["step"] = _step_of(path)
    strength = settings.get("strength")
    return Choice(path, float(strength) if strength is not None else (_middle(rec) or 1.0), used)


def _step_of(path: Path) -> int | None:
    digits = path.stem.removeprefix("adapter_step")
    return int(digits) if digits.isdigit() else None


def choose_adapter(cfg: DaemonConfig, queue: RunQueue, render: Run) -> Choice | None:
    """The adapter `render` uses now (see the module docstring); None while the job has no
    finished training run; RenderProblem for settings that cannot be met."""
    settings = render.config.get("render") or {}
    if settings.get("adapter"):
        path = Path(settings["adapter"])
        folder = Path(render.config["folder"])
        if not _inside(path, folder, cfg.paths.output_root):
            raise RenderProblem(f"render.toml's adapter {path} lies outside the render folder {folder} and the "
                                f"output root {cfg.paths.output_root}; copy it into the render folder")
        if path.is_symlink() or not path.is_file():
            raise RenderProblem(f"render.toml's adapter {path} is not a regular file; check the path")
        strength = settings.get("strength")
        return Choice(path, 1.0 if strength is None else float(strength),
                      {"chosen_by": "render.toml: adapter file", "step": _step_of(path)})
    return _from_runs(cfg, queue, render, settings)


def render_spec(cfg: DaemonConfig, render: Run, choice: Choice, device: str) -> dict[str, Any]:
    """The JSON spec of selva_engine.inference.render_job for `render`."""
    c, s = render.config, render.config.get("render") or {}
    sample_clip = ""
    if choice.used.get("run"):
        run_dir = choice.adapter.parent if choice.adapter is not None else None
        sample_clip = str(_read_json(run_dir / "meta.json").get("sample_clip") or "") if run_dir else ""
    return {"video": c["video"], "root": c["folder"], "name": c["name"],
            "out_dir": str(renders_dir(cfg, render.job)), "variant": c["variant"],
            "selva_dir": str(cfg.paths.weights_dir or ""), "prompt": c.get("prompt") or "",
            "data_dir": c.get("data_dir") or "", "sample_clip": sample_clip,
            "adapter": str(choice.adapter) if choice.adapter else None, "strength": choice.strength,
            "negative_prompt": s.get("negative_prompt", ""), "cfg": s.get("cfg", 4.5),
            "steps": s.get("steps", 25), "seed": s.get("seed", 0), "duration": s.get("duration"),
            "device": device, "used": {"job": render.job, "render_run": render.id, **choice.used}}
