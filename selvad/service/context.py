"""What the event and request handlers may use of the daemon: the `DaemonContext` protocol.

The handlers (selvad.service.events, selvad.service.requests) are constructed by the `Daemon`
and act on it; they see it through this protocol instead of importing the Daemon class, so
the service package has no import cycle and each handler can be driven by hand in tests.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Protocol

from selvad.config.daemon import DaemonConfig
from selvad.config.jobs import Job, RunSpec
from selvad.datasets.watch import Watcher
from selvad.runs.executor import RunHandle
from selvad.runs.queue import Run, RunQueue

__all__ = ["DaemonContext", "JobEvents"]


class JobEvents(Protocol):
    """The part of the event handler the request handler uses (enqueue JOB)."""

    def load(self, path: Path) -> Job | None:
        """Load and remember a job file; None (logged) when it is invalid."""

    def queue_job(self, job: Job, reason: str, force: bool = False) -> list[str] | None:
        """Validate the job's dataset and queue its runs; None when the dataset is invalid
        (or still being validated off the main loop: then they are queued once it is valid)."""

    def check(self, job: Job) -> tuple[bool | None, dict[str, Any]]:
        """Validate the job's dataset; (ok, manifest); ok None while validated off the loop."""

    def validating(self, job: Job) -> bool:
        """Whether the job's dataset is being validated off the main loop now."""

    def weights_problem(self, job: Job) -> str:
        """Why the configured weights cannot run the job's variant ("" when they can)."""

    def ready_to_start(self, run: Run) -> bool:
        """Whether `run` may start now (its dataset settled and valid; manifest current)."""


class DaemonContext(Protocol):
    """The daemon's state and actions shared with its handlers (all on the main thread)."""

    cfg: DaemonConfig
    log: Any  # structlog BoundLogger
    queue: RunQueue | None
    jobs: dict[str, Job]
    running: dict[str, RunHandle]  # run id -> the run executing it (one per slot)
    watcher: Watcher | None
    wake: threading.Event
    skip_window: set[str]
    events: JobEvents
    weights_problems: dict[str, str] | None  # variant -> why the weights cannot run it

    def manifest(self, job: Job) -> dict[str, Any]:
        """The current file manifest (names, sizes, content hashes) of `job`'s dataset."""

    def dataset_manifest(self, path: Path, name: str) -> dict[str, Any]:
        """The current file manifest of the dataset directory `path` (called `name`)."""

    def enqueue(self, spec: RunSpec, manifest: dict[str, Any], reason: str,
                force: bool = False, explicit: bool = False) -> Run | None:
        """Queue `spec` on `manifest`; None when the same run exists already."""

    def post(self, item: Any) -> None:
        """Hand an item to the main loop's inbox (safe from any thread)."""
        ...

    def keepalive(self, activity: str) -> None:
        """Feed the systemd watchdog and show `activity` during long main-thread work."""
