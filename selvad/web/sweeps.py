"""What the page shows of a job's sweep: the summary the daemon writes after each sweep run
(selvad.runs.sweeps: `<output_root>/<job>/sweep/sweep_summary.json` and
`loss_comparison.png`), joined with the queue's view of each run.

Same rules as the files of runs: a job is looked up among the jobs that have sweep runs in
the queue, its sweep directory must be a real directory (no link on the way) inside
output_root, and only the two names of `SWEEP_FILES` are ever served, as regular files.
Each run's recommended sample is served as that run's artefact (`/runs/<id>/files/...`).
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selvad.runs.queue import Run
from selvad.runs.sweeps import sweep_dir
from selvad.web.state import ReadOnlyState, servable

__all__ = ["SWEEP_FILES", "SweepBest", "SweepRow", "SweepSample", "SweepView", "ab_pair"]

SWEEP_FILES = {"sweep_summary.json": "application/json", "loss_comparison.png": "image/png"}
SUMMARY_MAX_BYTES = 16 << 20  # a summary larger than this is not parsed


@dataclass(frozen=True)
class SweepRow:
    """One run of a sweep, as the sweep page's table shows it."""

    sweep_id: str
    run_id: str | None  # None when the summary names a run the queue no longer has
    state: str
    config: dict[str, Any]  # only the settings that differ between the sweep's runs
    duration_s: float | None
    final_loss: float | None  # smoothed training loss at the end
    best_val_loss: float | None  # lowest held-out loss (what picks adapter_best.pt)
    min_loss: float | None
    min_loss_step: int | None
    recommended: str | None  # the run's recommended adapter file name
    strength_range: list[float] | None
    reason: str | None
    sample: str | None  # file name of the recommended checkpoint's sample, when kept
    error: str | None


@dataclass(frozen=True)
class SweepBest:
    """The sweep-wide recommendation (`<sweep id>@<step>` in the summary) as the page shows
    it: which run, which step, and that checkpoint's sample when the run still has it."""

    sweep_id: str
    step: int
    run_id: str | None
    sample: str | None


@dataclass(frozen=True)
class SweepSample:
    """A checkpoint sample of one run of a sweep: a choice of the sweep page's A/B player."""

    sweep_id: str
    run_id: str
    step: int
    url: str  # the sample, served as the run's artefact
    spectrogram: str | None  # the url of its spectrogram picture, when the trainer drew one
    reference: str | None  # the url of that run's reference clip, when it has one
    clip: str | None  # the stem of the clip the run sampled (meta.json)
    recommended: bool  # the run's recommended checkpoint


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _varied(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every run (sorted)."""
    keys = sorted({k for c in configs for k in c})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str)
                                    for c in configs}) > 1]


class SweepView:
    """Read-only views of the sweeps of the jobs in `state`'s queue."""

    def __init__(self, state: ReadOnlyState) -> None:
        self.state = state

    def jobs(self) -> list[str]:
        """Names of the jobs with at least one sweep run in the queue."""
        return sorted({r.job for r in self.state.runs() if r.sweep_id})

    def runs(self, job: str) -> list[Run]:
        """The newest run of every sweep id of `job`, in sweep id order."""
        newest: dict[str, Run] = {}
        for r in self.state.runs(job):
            if r.kind == "train" and r.sweep_id:
                newest[r.sweep_id] = r
        return [newest[k] for k in sorted(newest)]

    def directory(self, job: str) -> Path | None:
        """The job's sweep directory when the job has sweep runs and the directory is a real
        one (no link on the way) inside output_root; else None."""
        if job not in self.jobs():
            return None
        root = self.state.cfg.paths.output_root
        path = sweep_dir(self.state.cfg, job)
        if not (_is_real_dir(path.parent) and _is_real_dir(path)):
            return None
        try:
            return path if path.resolve().is_relative_to(root.resolve()) else None
        except OSError:
            return None

    def file(self, job: str, name: str) -> Path | None:
        """The path of sweep file `name` of `job` when it is one of SWEEP_FILES and a
        regular file; else None."""
        folder = self.directory(job) if name in SWEEP_FILES else None
        if folder is None:
            return None
        try:
            return folder / name if servable(os.lstat(folder / name)) else None
        except OSError:
            return None

    def summary(self, job: str) -> dict[str, Any]:
        """The job's sweep_summary.json ({} when absent, too large or unreadable)."""
        path = self.file(job, "sweep_summary.json")
        try:
            if path is None or path.stat().st_size > SUMMARY_MAX_BYTES:
                return {}
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def rows(self, job: str, summary: dict[str, Any]) -> list[SweepRow]:
        """One row per run of the sweep: the summary's experiments when it has them, else
        the queue's sweep runs (before the first run finished)."""
        experiments = [e for e in summary.get("experiments") or [] if isinstance(e, dict)]
        if not experiments:
            experiments = [{"id": r.sweep_id, "run_id": r.id, "status": r.state,
                            "config": r.config, "error": r.error} for r in self.runs(job)]
        varied = _varied([e.get("config") or {} for e in experiments])
        return [self._row(job, e, varied) for e in experiments]

    def best(self, summary: dict[str, Any], rows: list[SweepRow]) -> SweepBest | None:
        """The summary's recommendation resolved to a run of `rows` (None when it has none)."""
        sweep_id, _, step = str((summary.get("recommendation") or {}).get("id") or "").rpartition("@")
        if not sweep_id or not step.isdigit():
            return None
        row = next((r for r in rows if r.sweep_id == sweep_id), None)
        run = self.state.run(row.run_id) if row and row.run_id else None
        name = f"sample_step{int(step):05d}.wav"
        sample = name if run is not None and name in self.state.files(run) else None
        return SweepBest(sweep_id, int(step), run.id if run else None, sample)

    def _row(self, job: str, exp: dict[str, Any], varied: list[str]) -> SweepRow:
        run = self.state.run(str(exp.get("run_id") or ""))
        run = run if run is not None and run.job == job else None
        res = exp.get("results") or {}
        rec = (self.state.meta(run) if run else {}).get("recommendation") or res.get(
            "run_recommendation") or {}
        sample = None
        if run is not None:
            files = self.state.files(run)
            picked = [c for c in self.state.checkpoints(run, files, {"recommendation": rec})
                      if c.recommended]
            sample = picked[0].sample if picked else None
        config = exp.get("config") or {}
        return SweepRow(
            sweep_id=str(exp.get("id")), run_id=run.id if run else None,
            state=run.state if run else str(exp.get("status")),
            config={k: config.get(k) for k in varied}, duration_s=exp.get("duration_seconds"),
            final_loss=res.get("final_loss"), best_val_loss=res.get("best_val_loss"),
            min_loss=res.get("min_loss"),
            min_loss_step=res.get("min_loss_step"), recommended=rec.get("id"),
            strength_range=rec.get("strength_range"), reason=rec.get("reason"), sample=sample,
            error=(run.error if run else exp.get("error")))

    def samples(self, rows: list[SweepRow]) -> list[SweepSample]:
        """Every checkpoint sample of every run of `rows` (in row, then step order)."""
        out = []
        for row in rows:
            run = self.state.run(row.run_id) if row.run_id else None
            if run is None:
                continue
            files = self.state.files(run)
            ref = f"/runs/{run.id}/reference" if "sample_reference.wav" in files else None
            clip = self.state.meta(run).get("sample_clip")
            rec = {"recommendation": {"id": row.recommended}}
            base = f"/runs/{run.id}/files/"
            out += [SweepSample(row.sweep_id, run.id, c.step, base + c.sample,
                                base + c.spectrogram if c.spectrogram else None, ref,
                                clip if isinstance(clip, str) else None, c.recommended)
                    for c in self.state.checkpoints(run, files, rec) if c.sample]
        return out


def ab_pair(samples: list[SweepSample], best: SweepBest | None) -> tuple[int, int]:
    """Indexes into `samples` of the A/B player's first choices: A is the sweep-wide
    recommendation (else the first run's recommended or newest sample), B the recommended
    (else newest) sample of the next run. Both 0 when there are no samples."""
    runs = list(dict.fromkeys(s.sweep_id for s in samples))
    if not runs:
        return 0, 0

    def pick(sweep_id: str, step: int | None = None) -> int:
        mine = [i for i, s in enumerate(samples) if s.sweep_id == sweep_id]
        exact = [i for i in mine if samples[i].step == step]
        return (exact or [i for i in mine if samples[i].recommended] or mine)[-1]

    first = best.sweep_id if best is not None and best.sweep_id in runs else runs[0]
    a = pick(first, best.step if best is not None and best.sweep_id == first else None)
    others = [r for r in runs if r != first]
    return a, pick(others[0]) if others else a
