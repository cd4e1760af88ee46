"""Starting queued runs on free slots, following them, stopping them (the main loop's side).

Each tick the daemon asks its executor (selvad.runs.executor) for free slots and fills
them with queued runs in queue order: extraction first, then priority, then age, so the
highest-priority run that may start takes the next free slot whichever device frees up.
A run is passed over, and the next one considered, when it may not start yet: a training
run outside the training windows (unless `selvad skip`), one whose dataset is still
settling or has errors, and a training run while an extraction of its dataset and variant
is running (it would encode the same clips a second time; it starts once the cache is
filled). One run per slot: a GPU never holds two runs, extraction included.

Every run is its own child (or Ray task): a crash, an out-of-memory kill or a cancel ends
that run only; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from selvad.config.windows import window_open
from selvad.runs.executor import Executor, RunHandle
from selvad.runs.queue import Run
from selvad.runs.rundir import describe_start_error
from selvad.runs.slots import Slot
from selvad.service.context import DaemonContext

__all__ = ["STOP_TIMEOUT", "Runner"]

STOP_TIMEOUT = 100.0  # seconds stopping children may take to checkpoint (unit: 120 s)


class Runner:
    """The running runs of `daemon` (`running`: run id -> handle) on `executor`."""

    def __init__(self, daemon: DaemonContext, executor: Executor) -> None:
        self.d = daemon
        self.executor = executor
        self.running: dict[str, RunHandle] = daemon.running
        self._window_was_open: bool | None = None

    # -- picking -------------------------------------------------------------------------

    def pick(self, ready: Callable[[Run], bool] = lambda run: True) -> Run | None:
        """The queued run to start next (see the module docstring), or None."""
        assert self.d.queue is not None
        window: bool | None = None
        chosen = None
        for run in self.d.queue.startable():
            if run.kind == "train" and run.id not in self.d.skip_window:
                if window is None:
                    window = window_open(self.d.cfg.schedule.training_windows, datetime.now())
                if not window:
                    continue
            if self._extracting_for(run) or not ready(run):
                continue
            chosen = run
            break
        self._note_window(window is not False or chosen is not None)
        return chosen

    def _extracting_for(self, run: Run) -> bool:
        """Whether an extraction of `run`'s dataset and variant is running (training)."""
        if run.kind != "train":
            return False
        variant = run.config.get("variant")
        return any(h.run.kind == "extract" and h.run.dataset == run.dataset
                   and h.run.config.get("variant") == variant for h in self.running.values())

    def _note_window(self, open_: bool) -> None:
        windows = list(self.d.cfg.schedule.training_windows)
        if self._window_was_open is not None and open_ != self._window_was_open:
            self.d.log.info("schedule.window", open=open_, windows=windows)
        elif self._window_was_open is None and not open_:
            self.d.log.info("schedule.waiting", windows=windows)
        self._window_was_open = open_

    # -- starting ------------------------------------------------------------------------

    def start_next(self) -> None:
        """Fill every free slot with the next run that may start."""
        while True:
            free = self.executor.free_slots(list(self.running.values()))
            if not free:
                return
            run = self.pick(ready=self.d.events.ready_to_start)
            if run is None or not self.start(run, free[0]):
                return

    def start(self, run: Run, slot: Slot) -> bool:
        """Claim `run` for `slot` and start it; False when it could not be claimed (a
        run that fails to start is recorded failed and True is returned: the slot is
        still free for the next one)."""
        assert self.d.queue is not None
        claimed = self.d.queue.claim(run.id, device=slot.label)
        if claimed is None:
            return False
        self.d.skip_window.discard(run.id)
        self.d.log.info("run.state", state="extracting", run_id=run.id, job=run.job,
                        dataset=run.dataset, kind=run.kind, sweep_id=run.sweep_id,
                        device=slot.label, attempt=claimed.attempts,
                        resume=claimed.attempts > 1)
        handle = self.executor.handle(claimed, self.d.queue, self.d.cfg, slot)
        try:
            handle.start()
        except Exception as exc:  # run boundary: e.g. the output dir is not writable
            self.d.log.exception("run.start_failed", run_id=run.id, job=run.job,
                                 dataset=run.dataset, device=slot.label)
            self.d.queue.set_state(run.id, "failed",
                                   error=f"could not start the run: {describe_start_error(exc)}")
            return True
        self.running[run.id] = handle
        return True

    # -- following -----------------------------------------------------------------------

    def check(self) -> None:
        """Reap the runs that ended (their slot is free again) and note stalled ones."""
        for run_id, handle in list(self.running.items()):
            if handle.poll() is not None:
                del self.running[run_id]
                self.d.wake.set()  # start the next run right away
            else:
                handle.check_stall()

    def status_text(self) -> str:
        """systemd's STATUS line: each running run with its device and step, the queue."""
        assert self.d.queue is not None
        queued = len(self.d.queue.list_runs(states=["queued"]))
        if not self.running:
            return f"idle; {queued} queued"
        parts = []
        for h in self.running.values():
            step = f" step {h.step}/{h.total_steps}" if h.step is not None else ""
            stalled = " STALLED (no output)" if h.stalled else ""
            parts.append(f"{h.state} {h.run.kind} {h.run.id} ({h.run.job}) on {h.slot.label}"
                         f"{step}{stalled}")
        return "; ".join(parts) + f"; {queued} queued"

    # -- stopping ------------------------------------------------------------------------

    def stop_all(self, keepalive: Callable[[], Any], timeout: float = STOP_TIMEOUT) -> None:
        """Ask every running run to checkpoint and stop (they go back to queued), wait up
        to `timeout` seconds for them all (calling `keepalive` meanwhile), then kill the
        rest; logs each `run.stopped`."""
        handles = list(self.running.values())
        for h in handles:
            h.interrupt()
        deadline = time.monotonic() + timeout
        outcomes: dict[str, Any] = {}
        while len(outcomes) < len(handles) and time.monotonic() < deadline:
            for h in handles:
                if h.run.id not in outcomes and (out := h.wait(0.2)) is not None:
                    outcomes[h.run.id] = out
            keepalive()
        for h in handles:
            if h.run.id not in outcomes:
                h.kill()
                outcomes[h.run.id] = h.wait(10)
            out = outcomes[h.run.id]
            self.d.log.info("run.stopped", run_id=h.run.id, job=h.run.job, device=h.slot.label,
                            state=out.state if out else "unknown")
            self.running.pop(h.run.id, None)
        self.executor.close()
