"""The queue row of a running run, written by a thread that retries, so nothing waits on it.

The worker's reader thread must drain the child's stdout all the time: a child whose pipe
is full blocks in `print` and stops training. Writing to the queue database can take long
(another connection holds the write lock: SQLite waits `busy_timeout`, then fails) or fail
(disk full). So the reader only hands writes to a `RowWriter`: its thread applies them in
order (state change, progress, status note, final state) and on a database error keeps
them, waits (0.5 s, 1 s, 2 s ... up to 10 s) and tries again. Progress updates coalesce
while a write is pending (only the newest values matter), so the backlog stays one row's
worth however long the database is unavailable. One warning is logged per outage, and
one line when writing works again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

from selvad.runs.queue import RunQueue

__all__ = ["RETRY_DELAYS", "RowWriter"]

RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0, 10.0)  # seconds between tries of a failing write
_ORDER = ("state", "device", "progress", "note", "final")  # the order pending writes are applied in


class RowWriter:
    """Writes for run `run_id` of `queue`, applied by a daemon thread (see module doc).

    `state()`, `progress()`, `note()` and `final()` return at once; `flush(timeout)` says
    whether everything handed over so far is written; `close()` ends the thread once the
    pending writes are done. `log` is the run's structlog logger.
    """

    def __init__(self, queue: RunQueue, run_id: str, log: Any) -> None:
        self.queue, self.run_id, self.log = queue, run_id, log
        self._cond = threading.Condition()
        self._pending: dict[str, Any] = {}
        self._busy = False  # a write taken from _pending is being applied
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=f"row-{run_id}", daemon=True)
        self._thread.start()

    # -- handing writes over (any thread; never blocks on the database) -----------------

    def state(self, new: str, output_dir: str | None = None) -> None:
        """Move the run to `new` (e.g. "training") and store `output_dir`."""
        self._put("state", (new, output_dir))

    def progress(self, **fields: Any) -> None:
        """Store progress fields (see RunQueue.update_progress); None values are ignored,
        newer values replace pending ones."""
        self._put("progress", {k: v for k, v in fields.items() if v is not None})

    def device(self, label: str) -> None:
        """Store the device the run really uses (the child's choice of an "auto" slot)."""
        self._put("device", label)

    def note(self, text: str | None) -> None:
        """Show `text` as the active run's note in `selvad status` (None clears it)."""
        self._put("note", text)

    def final(self, new: str, error: str | None, output_dir: str | None,
              retry_at: float | None = None) -> None:
        """The run's last write: its final (or requeued) state, see RunQueue.set_state."""
        self._put("final", {"new": new, "error": error, "output_dir": output_dir,
                            "retry_at": retry_at})

    def _put(self, kind: str, value: Any) -> None:
        with self._cond:
            if kind == "progress" and "progress" in self._pending:
                value = {**self._pending["progress"], **value}
            self._pending[kind] = value
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait up to `timeout` seconds (None: forever) until every write handed over is
        applied; True when it is."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def close(self) -> None:
        """Let the thread end once the pending writes are applied (no waiting here)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    # -- the writing thread --------------------------------------------------------------

    def _take(self) -> tuple[str, Any] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._pending or self._closed)
            if not self._pending:
                return None
            kind = next(k for k in _ORDER if k in self._pending)
            self._busy = True
            return kind, self._pending.pop(kind)

    def _give_back(self, kind: str, value: Any) -> None:
        """Put a failed write back unless a newer one of its kind arrived meanwhile."""
        with self._cond:
            if kind == "progress" and kind in self._pending:
                self._pending[kind] = {**value, **self._pending[kind]}
            elif kind not in self._pending:
                self._pending[kind] = value
            self._busy = False

    def _done(self) -> None:
        with self._cond:
            self._busy = False
            self._cond.notify_all()

    def _loop(self) -> None:
        try:
            self._write_all()
        finally:
            self.queue.close()  # this thread's connection

    def _write_all(self) -> None:
        failures, since = 0, 0.0
        while (item := self._take()) is not None:
            kind, value = item
            try:
                self._apply(kind, value)
            except (sqlite3.Error, OSError) as exc:  # busy, locked, disk full: try again
                self._give_back(kind, value)
                if failures == 0:
                    since = time.monotonic()
                    self.log.warning("run.queue_write_failed", write=kind,
                                     error=f"{type(exc).__name__}: {exc}",
                                     fix="nothing is lost: the write is retried; check the "
                                         "state directory's disk and who locks the queue")
                time.sleep(RETRY_DELAYS[min(failures, len(RETRY_DELAYS) - 1)])
                failures += 1
                continue
            except Exception:  # e.g. an illegal transition: retrying cannot help
                self.log.exception("run.queue_write_dropped", write=kind)
            if failures:
                self.log.info("run.queue_write_recovered", tries=failures + 1,
                              seconds=round(time.monotonic() - since, 1))
                failures = 0
            self._done()

    def _apply(self, kind: str, value: Any) -> None:
        if kind == "state":
            new, output_dir = value
            self.queue.set_state(self.run_id, new, output_dir=output_dir)
        elif kind == "progress":
            self.queue.update_progress(self.run_id, **value)
        elif kind == "device":
            self.queue.set_device(self.run_id, value)
        elif kind == "note":
            self.queue.set_note(self.run_id, value)
        else:
            self.queue.set_state(self.run_id, **value)
