"""Retention inside a run directory: which step checkpoints are pruned, and pruning them.

The final and best adapters are never touched; while a run is unfinished its newest step
checkpoint (the resume point) is kept whatever `keep_last` says, and the newest checkpoint
that loads is never pruned (when the highest-numbered files are unreadable, it is the resume
point). Pruning also deletes the temp files of writes a kill cut short.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from pathlib import Path

from selva_engine.io import remove_temp_files
from selva_engine.outputs.checkpoint import find_latest

__all__ = ["TEMP_GRACE_S", "checkpoints_to_prune", "prune_run_dir"]

_STEP_CKPT_RE = re.compile(r"^adapter_step(\d+)\.pt$")
# temp files younger than this are left alone: pruning runs after a run has ended, but a
# retried run may already write again; a live write's temp file is seconds old at most
TEMP_GRACE_S = 300.0


def checkpoints_to_prune(names: Sequence[str], keep_last: int, finished: bool = True,
                         newest_loadable: str | None = None) -> list[str]:
    """Which step checkpoints (`adapter_stepNNNNN.pt`) of one run directory to delete.

    The newest `keep_last` are kept; `adapter_final.pt`, `adapter_best.pt` and every other
    file never match. An unfinished run always keeps its newest checkpoint (its resume
    point), whatever `keep_last` says. `newest_loadable` (the name of the newest checkpoint
    that loads, when known) is kept too whenever anything is. Returns names, oldest first.
    """
    steps = sorted((int(m.group(1)), n) for n in names if (m := _STEP_CKPT_RE.match(n)))
    keep = max(keep_last, 0 if finished else 1)
    doomed = steps[: max(len(steps) - keep, 0)]
    return [n for _, n in doomed if not (keep and n == newest_loadable)]


def prune_run_dir(run_dir: Path | str, keep_last: int, finished: bool = True) -> list[Path]:
    """Delete the step checkpoints `checkpoints_to_prune` picks in `run_dir` (loading
    checkpoints, newest first, only when one that would go might be the newest that loads),
    and the atomic writers' temp files older than TEMP_GRACE_S. Call it for runs that are
    not running. Returns the deleted paths."""
    run_dir = Path(run_dir)
    names = [p.name for p in run_dir.iterdir() if p.is_file()] if run_dir.is_dir() else []
    doomed = checkpoints_to_prune(names, keep_last, finished)
    if doomed and (keep_last > 0 or not finished):
        latest = find_latest(run_dir)  # weights_only loads: the resume point's own test
        doomed = checkpoints_to_prune(names, keep_last, finished,
                                      newest_loadable=latest[0].name if latest else None)
    removed = []
    for name in doomed:
        (run_dir / name).unlink(missing_ok=True)
        removed.append(run_dir / name)
    return removed + remove_temp_files(run_dir, before=time.time() - TEMP_GRACE_S)
