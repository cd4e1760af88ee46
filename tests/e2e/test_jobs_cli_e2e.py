"""End-to-end: job files and CLI requests the daemon must not trust or block on.

A FIFO named `*.toml` in the jobs directory is reported as an invalid job while the main
loop stays responsive; a job with `on_change = false` trains only on `selvad enqueue`; a
job name that is a path is refused by the CLI and by the daemon's request handler.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e


def _release(fifo: Path) -> None:
    """Open and close the FIFO's write end without blocking: a reader stuck on it (only a
    daemon that opened it by mistake) then sees end of file."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _invalid(tree: DaemonTree, job: str) -> list[dict]:
    return [e for e in tree.events("job.invalid") if e.get("job") == job]


def test_fifo_job_file_manual_job_and_unsafe_names(tree: DaemonTree) -> None:
    tree.add_clips("birds", 3)
    (tree.root / "outside").mkdir()
    job = tree.write_job("evil", "birds")  # a valid job file, moved outside the jobs dir
    job.rename(tree.root / "outside" / "evil.toml")
    tree.start()
    tree.wait_for(lambda: tree.events("daemon.ready"), 30, "daemon.ready")
    fifo = tree.root / "jobs" / "pipe.toml"
    os.mkfifo(fifo)
    try:
        # the FIFO is reported, unread, as an invalid job; the loop goes on
        bad = tree.wait_for(lambda: _invalid(tree, "pipe"), 30, "job.invalid for the FIFO")
        assert "not a regular file (a FIFO)" in " ".join(bad[0]["problems"])

        # on_change = false: the job file queues the extraction only, never training
        tree.write_job("manual", "birds", on_change=False)
        tree.wait_for(lambda: [e for e in tree.events("job.manual")
                               if e.get("job") == "manual"], 30, "job.manual")
        assert [r.kind for r in tree.runs(job="extract-birds")] == ["extract"]
        status = tree.cli("status", timeout=30)
        assert status.returncode == 0 and status.stdout.startswith("runs: ")
        time.sleep(1.5)  # past the job's settle time (0.6 s): still no training
        assert tree.runs(job="manual") == []
        res = tree.cli("enqueue", "manual", "--wait", "30")
        assert res.returncode == 0 and res.stdout.startswith("queued "), res
        assert [r.kind for r in tree.runs(job="manual")] == ["train"]

        # a job name that is a path: the CLI refuses it, and so does the daemon's handler
        res = tree.cli("enqueue", "../outside/evil", "--wait", "5")
        assert res.returncode == 2 and "is not a job name" in res.stderr, res
        req = tree.queue.request("enqueue", job="../outside/evil")  # a row written by hand
        answer = tree.wait_for(lambda: tree.queue.get_request(req).result, 30, "an answer")
        assert answer.startswith("refused: '../outside/evil' is not a job name"), answer
        assert tree.runs(job="evil") == []

        started = time.monotonic()
        tree.signal(signal.SIGTERM)
        assert tree.wait_exit(60) == 0
        assert time.monotonic() - started < 60
    finally:
        _release(fifo)
