"""Retention inside a run directory: which step checkpoints are pruned, and pruning them.

The disk policy, per run directory:

- kept always: the final adapters (`adapter_final*.pt`), `adapter_best.pt`, the step
  checkpoint of the best validation loss and the recommended one (both named in
  `meta.json`), every report and plot;
- kept by default (`keep_spread`): an evenly spread set to audition, the first step
  checkpoint and the ones nearest the guide's marks, steps 500, 1000 and 2000;
- kept: the newest `keep_last` step checkpoints; while a run is unfinished its newest
  step checkpoint (the resume point) whatever `keep_last` says, and the newest checkpoint
  that loads (when the highest-numbered files are unreadable, it is the resume point);
- a pruned step checkpoint takes its sample (`sample_stepNNNNN.wav`, and its spectrogram
  `sample_stepNNNNN.png`) and its audition files (`audition/<video>_stepNNNNN.wav/.png/.mp4`,
  selva_engine.training.audition) with it, so every sample left to audition has the
  checkpoint it came from;
- the temp files of writes a kill cut short go after TEMP_GRACE_S.

So a run keeps at most `keep_last` + 2 (+ 4 spread) step checkpoints and their samples,
plus final/best.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Sequence
from pathlib import Path

from selva_engine.io import remove_temp_files
from selva_engine.outputs.checkpoint import find_latest

__all__ = ["GUIDE_MARKS", "TEMP_GRACE_S", "checkpoints_to_prune", "protected_checkpoints",
           "prune_run_dir", "spread_checkpoints"]

_STEP_CKPT_RE = re.compile(r"^adapter_step(\d+)\.pt$")
# selva_engine.training.audition's AUDITION_DIR, not imported: that module loads torch, which
# never loads into the daemon
AUDITION_DIR = "audition"
AUDITION_SUFFIXES = (".wav", ".png", ".mp4")  # what a checkpoint writes per audition video
GUIDE_MARKS = (500, 1000, 2000)  # the steps the training guide says to audition
# temp files younger than this are left alone: pruning runs after a run has ended, but a
# retried run may already write again; a live write's temp file is seconds old at most
TEMP_GRACE_S = 300.0


def checkpoints_to_prune(names: Sequence[str], keep_last: int, finished: bool = True,
                         newest_loadable: str | None = None,
                         protected: Collection[str] = ()) -> list[str]:
    """Which step checkpoints (`adapter_stepNNNNN.pt`) of one run directory to delete.

    The newest `keep_last` are kept; `adapter_final.pt`, `adapter_best.pt` and every other
    file never match. An unfinished run always keeps its newest checkpoint (its resume
    point), whatever `keep_last` says. `newest_loadable` (the name of the newest checkpoint
    that loads, when known) is kept too whenever anything is, and so is every name in
    `protected` (the best and recommended step checkpoints). Returns names, oldest first.
    """
    steps = sorted((int(m.group(1)), n) for n in names if (m := _STEP_CKPT_RE.match(n)))
    keep = max(keep_last, 0 if finished else 1)
    doomed = steps[: max(len(steps) - keep, 0)]
    return [n for _, n in doomed if not (keep and n == newest_loadable) and n not in protected]


def spread_checkpoints(names: Sequence[str], marks: Sequence[int] = GUIDE_MARKS) -> set[str]:
    """The evenly spread step checkpoints kept to audition: the first one and, for each of
    the guide's `marks` (steps 500, 1000, 2000) up to the run's newest step, the checkpoint
    nearest to it (the earlier one on a tie)."""
    steps = sorted(int(m.group(1)) for n in names if (m := _STEP_CKPT_RE.match(n)))
    if not steps:
        return set()
    kept = {steps[0]}
    for mark in marks:
        if mark <= steps[-1]:
            kept.add(min(steps, key=lambda s: (abs(s - mark), s)))
    return {f"adapter_step{s:05d}.pt" for s in kept}


def protected_checkpoints(run_dir: Path) -> set[str]:
    """The step checkpoints `meta.json` in `run_dir` names as best (lowest validation
    loss) or recommended; empty when there is no readable meta.json."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    names: set[str] = set()
    best, rec = meta.get("best"), meta.get("recommendation")
    if isinstance(best, dict) and isinstance(best.get("step"), int):
        names.add(f"adapter_step{best['step']:05d}.pt")
    if isinstance(rec, dict):
        for value in (rec.get("path"), rec.get("id")):
            if isinstance(value, str) and _STEP_CKPT_RE.match(Path(value).name):
                names.add(Path(value).name)
    return names


def prune_run_dir(run_dir: Path | str, keep_last: int, finished: bool = True,
                  keep_spread: bool = True) -> list[Path]:
    """Delete the step checkpoints `checkpoints_to_prune` picks in `run_dir` (loading
    checkpoints, newest first, only when one that would go might be the newest that loads)
    with their samples, and the atomic writers' temp files older than TEMP_GRACE_S; with
    `keep_spread` the `spread_checkpoints` stay too. Call it for runs that are not running.
    Returns the deleted paths."""
    run_dir = Path(run_dir)
    names = [p.name for p in run_dir.iterdir() if p.is_file()] if run_dir.is_dir() else []
    protected = protected_checkpoints(run_dir) | (spread_checkpoints(names) if keep_spread
                                                  else set())
    doomed = checkpoints_to_prune(names, keep_last, finished, protected=protected)
    if doomed and (keep_last > 0 or not finished):
        latest = find_latest(run_dir)  # weights_only loads: the resume point's own test
        doomed = checkpoints_to_prune(names, keep_last, finished,
                                      newest_loadable=latest[0].name if latest else None,
                                      protected=protected)
    removed = []
    for name in doomed:  # a checkpoint and its sample (and the sample's picture) go together
        sample = "sample_" + name.removeprefix("adapter_").removesuffix(".pt")
        for gone in (name, *(n for n in (sample + ".wav", sample + ".png") if n in names)):
            (run_dir / gone).unlink(missing_ok=True)
            removed.append(run_dir / gone)
        removed += _prune_auditions(run_dir, name)
    return removed + remove_temp_files(run_dir, before=time.time() - TEMP_GRACE_S)


def _prune_auditions(run_dir: Path, checkpoint: str) -> list[Path]:
    """Delete the audition files (`audition/<video>_stepNNNNN.wav/.png/.mp4`) of `checkpoint`."""
    folder = run_dir / AUDITION_DIR
    m = _STEP_CKPT_RE.match(checkpoint)
    if m is None or not folder.is_dir():
        return []
    tail = f"_step{int(m.group(1)):05d}"
    gone = [p for p in folder.iterdir() if p.is_file() and p.suffix in AUDITION_SUFFIXES
            and p.stem.endswith(tail)]
    for path in gone:
        path.unlink(missing_ok=True)
    return gone
