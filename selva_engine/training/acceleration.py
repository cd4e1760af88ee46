"""Optional speed-ups of the training step: torch.compile of the transformer blocks, with a
fallback to eager execution when compiling fails, and activation checkpointing.

Both change how the step runs, never what it computes: the losses and gradients match the
plain step within rounding (tests/engine/training/test_acceleration.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["CompileTrial", "compile_blocks", "transformer_blocks", "uncompile_blocks"]


def transformer_blocks(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The generator's joint and fused transformer blocks, in forward order."""
    yield from model.joint_blocks
    yield from model.fused_blocks


def compile_blocks(model: torch.nn.Module) -> int:
    """Mark every transformer block of `model` for torch.compile (in place, so state_dict
    keys do not change); compiling happens lazily at the first forward. Returns the count."""
    count = 0
    for block in transformer_blocks(model):
        block.compile()
        count += 1
    return count


def uncompile_blocks(model: torch.nn.Module) -> None:
    """Undo `compile_blocks`: the blocks run eagerly again."""
    for block in transformer_blocks(model):
        # nn.Module.compile() stores the compiled call here; None restores the eager call
        block._compiled_call_impl = None


class CompileTrial:
    """The first micro-step of a run with compiled blocks, run as a trial.

    Called in place of `runner.micro_step(idx, step)` once. It times the step (compiling
    happens inside it) and emits a "compile" event with the seconds taken. When compiling
    fails (no C++ compiler, an unsupported op, a backend error), it puts the blocks back to
    eager, restores the step's random generators, drops any partial gradients, warns once
    with the fix and runs the same step eagerly, so the run goes on with the numbers it
    would have had without `compile`.
    """

    def __init__(self, model: torch.nn.Module, emit: Callable[[dict[str, Any]], None],
                 warn: Callable[[str], None]) -> None:
        self.model, self.emit, self.warn = model, emit, warn

    def __call__(self, runner: Any, idx_list: list[int], step: int | None) -> None:
        gens = (runner.gen_t, runner.gen_noise)
        states = [g.get_state() for g in gens]
        start = time.perf_counter()
        try:
            runner.micro_step(idx_list, step)
        except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
            uncompile_blocks(self.model)
            for g, state in zip(gens, states, strict=True):
                g.set_state(state)
            runner.optimizer.zero_grad(set_to_none=True)  # the first step: nothing accumulated yet
            reason = (str(exc).strip().splitlines() or [""])[0][:200]
            self.warn(f"compile = true: torch.compile failed ({type(exc).__name__}: {reason}); "
                      "training without it, set compile = false to skip the attempt")
            runner.micro_step(idx_list, step)
            return
        self.emit({"event": "compile", "seconds": round(time.perf_counter() - start, 3),
                   "blocks": sum(1 for _ in transformer_blocks(self.model))})
