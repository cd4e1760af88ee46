"""Heavy dataset validation on a worker thread, so the main loop stays responsive.

A dataset whose files add up to more than `OFF_LOOP_BYTES` is validated on a daemon thread
(one at a time): the main loop goes on answering requests, feeding the watchdog and
starting other jobs' runs meanwhile. The thread only computes the report (a pure function
of the dataset's files, in bounded memory: `selvad.datasets.validate`); when it ends it
posts a `ValidationDone` to the main loop, which records the report and runs what was
waiting for it (the event handler's continuations), so every queue and watched-table write
stays on the main thread. A smaller dataset is validated inline, as before: a thread would
only add a tick of latency. While it runs, its progress ("validating big: 1200/5000 clips") is
kept for the daemon's STATUS line (`activity`), which the main loop's heartbeat sends; the
thread never feeds the watchdog, so a stuck main loop is still noticed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from selvad.datasets.validate import ValidationReport

__all__ = ["OFF_LOOP_BYTES", "UNUSED", "BackgroundValidator", "Key", "ValidationDone", "dataset_bytes"]

OFF_LOOP_BYTES = 32 * 2**20  # a dataset above this total size is validated off the main loop

Key = tuple[str, str, str]  # (dataset dir, variant, manifest hash)
UNUSED = "unused "  # a variant prefix: the report of a dataset no job names yet


@dataclass(frozen=True)
class ValidationDone:
    """Posted to the main loop when the background validation of `key` has ended."""
    key: Key


@dataclass
class _Pending:
    thread: threading.Thread
    activity: str = ""  # its progress in words, for STATUS
    report: ValidationReport | None = None
    error: BaseException | None = None
    after: list[Callable[[], None]] = field(default_factory=list)


def dataset_bytes(manifest: dict[str, Any]) -> int:
    """The total size of a manifest's files."""
    return sum(int(f.get("size") or 0) for f in manifest.get("files", []))


class BackgroundValidator:
    """Runs validations on daemon threads, one at a time, and hands their results back
    through `post` (the daemon's inbox)."""

    def __init__(self, post: Callable[[Any], None]) -> None:
        self._post = post
        self._one_at_a_time = threading.Semaphore(1)
        self._pending: dict[Key, _Pending] = {}

    def pending(self, key: Key) -> bool:
        return key in self._pending

    def keys(self) -> list[Key]:
        return list(self._pending)

    def note(self, key: Key, activity: str) -> None:
        """Record the progress of `key`'s validation (called from its thread)."""
        pending = self._pending.get(key)
        if pending is not None:
            pending.activity = activity

    def activity(self) -> str:
        """What the running validations are doing, in words ("" when none is)."""
        return "; ".join(p.activity for p in list(self._pending.values()) if p.activity)

    def start(self, key: Key, validate: Callable[[], ValidationReport],
              then: Callable[[], None] | None = None) -> None:
        """Validate `key` with `validate()` on a thread (once; a second call only adds its
        continuation); `then` runs on the main loop after the result is recorded."""
        pending = self._pending.get(key)
        if pending is None:
            thread = threading.Thread(target=self._run, args=(key, validate), daemon=True,
                                      name=f"validate {key[0]}")
            pending = self._pending[key] = _Pending(thread)
            thread.start()
        if then is not None:
            pending.after.append(then)

    def take(self, key: Key) -> tuple[ValidationReport | None, BaseException | None,
                                      list[Callable[[], None]]]:
        """The finished validation of `key`: (report, error, continuations); forgotten."""
        pending = self._pending.pop(key, None)
        if pending is None:
            return None, None, []
        pending.thread.join()
        return pending.report, pending.error, pending.after

    def _run(self, key: Key, validate: Callable[[], ValidationReport]) -> None:
        pending = self._pending[key]
        with self._one_at_a_time:
            try:
                pending.report = validate()
            except Exception as exc:  # handed to the main loop, which logs it
                pending.error = exc
        self._post(ValidationDone(key))
