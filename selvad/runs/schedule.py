"""Periodic maintenance jobs of the daemon (apscheduler 3.x): rescans and retention.

apscheduler is imported only when a scheduler is built, so importing this module stays cheap.
Training windows are parsed in selvad.config.windows; pruning lives in selvad.runs.retention.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from apscheduler.schedulers.background import BackgroundScheduler

__all__ = ["build_scheduler", "reschedule"]


def build_scheduler(
    *,
    rescan_minutes: float,
    retention_minutes: float,
    rescan: Callable[[], Any],
    retention: Callable[[], Any],
    start: bool = True,
) -> BackgroundScheduler:
    """Create a BackgroundScheduler with the periodic "rescan" and "retention" jobs.

    Both jobs coalesce missed runs into one, never overlap themselves (max_instances=1) and
    tolerate a late start of a whole interval. A non-positive interval leaves that job out.
    The scheduler is started unless `start` is False; stop it with `.shutdown(wait=False)`.
    """
    from apscheduler.schedulers.background import BackgroundScheduler

    sched = BackgroundScheduler(daemon=True)
    reschedule(
        sched,
        rescan_minutes=rescan_minutes,
        retention_minutes=retention_minutes,
        rescan=rescan,
        retention=retention,
    )
    if start:
        sched.start()
    return sched


def reschedule(
    sched: BackgroundScheduler,
    *,
    rescan_minutes: float,
    retention_minutes: float,
    rescan: Callable[[], Any],
    retention: Callable[[], Any],
) -> None:
    """(Re)install the periodic jobs on `sched` with new intervals (used on config reload)."""
    for job_id, minutes, func in (
        ("rescan", rescan_minutes, rescan),
        ("retention", retention_minutes, retention),
    ):
        if sched.get_job(job_id) is not None:
            sched.remove_job(job_id)
        if minutes > 0:
            seconds = minutes * 60.0
            sched.add_job(
                func,
                "interval",
                seconds=seconds,
                id=job_id,
                name=job_id,
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(seconds)),
            )


