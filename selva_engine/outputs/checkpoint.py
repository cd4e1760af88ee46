"""Step checkpoints: write (atomically), find the newest usable one, read back.

A step checkpoint is one dict, ComfyUI-SelVA's keys plus what an exact resume needs:
{"state_dict", "meta", "optimizer", "scheduler", "step", "rng", "sampler", "history",
"scaler", "config", "split"}. Everything in it is tensors, numbers, strings, lists and
dicts, so it loads with torch.load(weights_only=True).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from selva_engine.io import UnsafeFileError, atomic_torch_save, safe_torch_load

__all__ = ["STEP_RE", "checkpoint_name", "find_latest", "list_checkpoints", "load_checkpoint",
           "save_checkpoint"]

STEP_RE = re.compile(r"^adapter_step(\d{5,})\.pt$")


def checkpoint_name(step: int) -> str:
    """adapter_stepNNNNN.pt (zero-padded to 5 digits)."""
    return f"adapter_step{step:05d}.pt"


def list_checkpoints(out_dir: Path | str) -> list[tuple[int, Path]]:
    """(step, path) of every step checkpoint in `out_dir`, ascending by step."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for p in out_dir.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def save_checkpoint(path: Path | str, payload: dict[str, Any]) -> Path:
    """Write a checkpoint atomically (never leaves a truncated file under its name)."""
    return atomic_torch_save(path, payload)


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Read a step checkpoint (weights_only) and check it has what a resume needs."""
    obj = safe_torch_load(path, what="step checkpoint", fix="resume from an earlier adapter_stepNNNNN.pt")
    needed = {"state_dict", "optimizer", "scheduler", "step"}
    if not isinstance(obj, dict) or not needed <= set(obj):
        missing = sorted(needed - set(obj)) if isinstance(obj, dict) else sorted(needed)
        raise UnsafeFileError(path, f"not a resumable step checkpoint (missing {', '.join(missing)})",
                              "pass an adapter_stepNNNNN.pt file, not adapter_final.pt")
    return obj


def find_latest(out_dir: Path | str) -> tuple[Path, dict[str, Any]] | None:
    """The newest step checkpoint in `out_dir` that loads, with its content; None if none.

    Unreadable files (e.g. from a disk failure) are skipped in favour of older ones.
    """
    for _, path in reversed(list_checkpoints(out_dir)):
        try:
            return path, load_checkpoint(path)
        except (UnsafeFileError, FileNotFoundError):
            continue
    return None
