"""Executors: where the daemon's runs execute, behind one interface.

The daemon stays the only owner of the queue, the watch folders and the output tree; an
executor only says which slots are free and turns a claimed run into a `RunHandle` that
the main loop polls, cancels and stops. Two kinds (`[executor] kind`):

- "local" (`LocalExecutor`): the slots of `[device] name` on this machine
  (selvad.runs.slots), each run a child process (`selvad.runs.worker.RunProcess`) pinned
  to its slot's GPU;
- "ray" (`selvad.runs.rayexec.RayExecutor`, with `pip install 'selvad[ray]'`): runs
  placed by a Ray cluster on any node with a free GPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from selvad.config.daemon import DaemonConfig
from selvad.runs.queue import Run, RunQueue
from selvad.runs.slots import Slot
from selvad.runs.worker import Outcome, RunProcess

__all__ = ["Executor", "LocalExecutor", "RunHandle"]


class RunHandle(Protocol):
    """One started run, as the daemon's main loop sees it (RunProcess is one)."""

    run: Run
    slot: Slot
    state: str
    step: int | None
    total_steps: int | None
    stalled: bool

    def start(self) -> None:
        """Write the run's files and start it; OSError when it cannot start."""

    def poll(self) -> Outcome | None:
        """The Outcome once the run has ended and its row is final, else None."""

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """Like poll, waiting up to `timeout` seconds."""

    def cancel(self) -> None:
        """Stop for good (it checkpoints first); the run ends cancelled."""

    def interrupt(self) -> None:
        """Stop for a daemon shutdown (it checkpoints first); the run goes back to queued."""

    def kill(self) -> None:
        """Stop at once (after a stop timeout)."""

    def check_stall(self) -> bool:
        """Note (once) that the run has been silent too long; True while it is."""


class Executor(Protocol):
    """Where runs execute: free slots, and a handle for a claimed run on one of them."""

    kind: str

    def free_slots(self, running: Iterable[RunHandle]) -> list[Slot]:
        """Slots a new run may take now, given the runs still `running`."""

    def handle(self, run: Run, queue: RunQueue, cfg: DaemonConfig, slot: Slot) -> RunHandle:
        """A handle (not started) for the claimed `run` on `slot`."""

    def close(self) -> None:
        """Release what the executor holds (after the last run has stopped)."""


class LocalExecutor:
    """The slots of this machine (see selvad.runs.slots): one child process per run, at
    most one run per slot; a free slot goes to the next run in queue order."""

    kind = "local"

    def __init__(self, slots: list[Slot]) -> None:
        self.slots = list(slots)

    def free_slots(self, running: Iterable[RunHandle]) -> list[Slot]:
        """The slots no running run holds, in configured order."""
        busy = {h.slot.label for h in running}
        return [s for s in self.slots if s.label not in busy]

    def handle(self, run: Run, queue: RunQueue, cfg: DaemonConfig, slot: Slot) -> RunHandle:
        """A RunProcess for `run` pinned to `slot`."""
        return RunProcess(run, queue, cfg, slot)

    def close(self) -> None:
        """Nothing to release: each child ends with its run."""
