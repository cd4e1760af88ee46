"""Retention inside a run directory: which step checkpoints are pruned, and pruning them.

The final and best adapters are never touched; while a run is unfinished its newest step
checkpoint (the resume point) is kept whatever `keep_last` says.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["checkpoints_to_prune", "prune_run_dir"]

_STEP_CKPT_RE = re.compile(r"^adapter_step(\d+)\.pt$")


def checkpoints_to_prune(names: Sequence[str], keep_last: int, finished: bool = True) -> list[str]:
    """Which step checkpoints (`adapter_stepNNNNN.pt`) of one run directory to delete.

    The newest `keep_last` are kept; `adapter_final.pt`, `adapter_best.pt` and every other
    file never match. An unfinished run always keeps its newest checkpoint (its resume
    point), whatever `keep_last` says. Returns names, oldest first.
    """
    steps = sorted((int(m.group(1)), n) for n in names if (m := _STEP_CKPT_RE.match(n)))
    keep = max(keep_last, 0 if finished else 1)
    doomed = steps[: max(len(steps) - keep, 0)]
    return [n for _, n in doomed]


def prune_run_dir(run_dir: Path | str, keep_last: int, finished: bool = True) -> list[Path]:
    """Delete the step checkpoints `checkpoints_to_prune` picks in `run_dir`; returns them."""
    run_dir = Path(run_dir)
    names = [p.name for p in run_dir.iterdir() if p.is_file()] if run_dir.is_dir() else []
    removed = []
    for name in checkpoints_to_prune(names, keep_last, finished):
        (run_dir / name).unlink(missing_ok=True)
        removed.append(run_dir / name)
    return removed

