"""The apscheduler wiring of the periodic jobs."""

from __future__ import annotations

import threading

from selvad.runs.schedule import build_scheduler


def test_scheduler_runs_periodic_jobs() -> None:
    ran = threading.Event()
    sched = build_scheduler(rescan_minutes=0.002, retention_minutes=0,  # 0.12 s
                            rescan=ran.set, retention=lambda: None)
    try:
        assert {j.id for j in sched.get_jobs()} == {"rescan"}
        assert ran.wait(5.0)
    finally:
        sched.shutdown(wait=False)


