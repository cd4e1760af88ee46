"""A damaged queue database as the daemon meets it at start-up (stop, `truncate -s 50%`, start):
it recovers, logs what it did and serves; with nothing to restore from it exits 78 with one
line naming the file and the fix, instead of a traceback and a restart loop."""

from __future__ import annotations

import os

import pytest

from selvad.runs.queue import RunQueue
from selvad.runs.recovery import backup
from tests.daemon.runs.test_recovery import _finish

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e


def test_a_truncated_database_is_recovered_by_the_daemon(tree: DaemonTree) -> None:
    db = tree.root / "state" / "queue.sqlite3"
    q = RunQueue(db)
    done = _finish(q, tree.root / "out", "job-a", 1e-4)
    backup(q)
    later = _finish(q, tree.root / "out", "job-b", 2e-4)  # after the backup: from its dir
    q.close()
    os.truncate(db, db.stat().st_size // 2)
    tree.start()
    tree.wait_for(lambda: tree.events("daemon.ready"), 60, "daemon.ready")
    rec = tree.events("queue.recovered")
    assert rec and rec[0]["restored_from"].endswith("queue.sqlite3.backup"), tree.log_tail()
    assert rec[0]["runs_from_output_tree"] == [later]
    assert {r.id: r.state for r in tree.runs()} == {done: "done", later: "done"}
    status = tree.cli("status")
    assert status.returncode == 0 and done in status.stdout, status.stdout + status.stderr


def test_nothing_to_restore_from_exits_78_with_one_line(tree: DaemonTree) -> None:
    db = tree.root / "state" / "queue.sqlite3"
    db.write_bytes(b"garbage" * 100)
    tree.start()
    assert tree.wait_exit(60) == 78, tree.log_tail()
    log = tree.log_path.read_text()
    assert "Traceback" not in log
    err = tree.events("daemon.queue_unrecoverable")
    assert err and str(db) in err[0]["message"] and "mv " in err[0]["message"]
    assert not tree.events("daemon.ready")
