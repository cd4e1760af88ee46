"""The queue database: an older database gains the new columns; opening and reading an
up-to-date one never needs the write lock; automatic retries wait for their time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from selvad.runs.queue import RunQueue
from selvad.runs.queuedb import ADDED_COLUMNS, SCHEMA


def _old_schema() -> str:
    text = SCHEMA
    for name, _ in ADDED_COLUMNS:
        text = "\n".join(line for line in text.splitlines() if not line.strip().startswith(name))
    return text.replace("pid INTEGER,", "pid INTEGER")


def test_an_older_database_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_old_schema())
    conn.execute("INSERT INTO runs (id, job, dataset, kind, state, config_json, config_hash,"
                 " manifest_json, manifest_hash, created_at) VALUES ('r1', 'j', 'd', 'train',"
                 " 'queued', '{}', 'c', '{}', 'm', 1.0)")
    conn.commit()
    conn.close()
    q = RunQueue(path)
    run = q.get("r1")
    assert run is not None and run.auto_retries == 0 and run.not_before is None
    assert q.next_run().id == "r1"


def test_opening_and_reading_never_wait_for_a_writer(tmp_path: Path) -> None:
    path = tmp_path / "queue.sqlite3"
    RunQueue(path).enqueue("j", "d", {}, {})
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        began = time.monotonic()
        q = RunQueue(path, busy_timeout=5)
        assert len(q.list_runs()) == 1 and q.next_run() is not None
        assert time.monotonic() - began < 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_an_automatic_retry_waits_for_its_time(tmp_path: Path) -> None:
    q = RunQueue(tmp_path / "queue.sqlite3")
    run = q.enqueue("j", "d", {}, {})
    assert run is not None and q.claim(run.id) is not None
    later = time.time() + 60
    row = q.set_state(run.id, "queued", error="killed; retrying at 12:00", retry_at=later)
    assert row.not_before == later and row.auto_retries == 1 and row.error.startswith("killed")
    assert q.next_run() is None and q.claim(run.id) is None
    assert q.next_run(now=later + 1).id == run.id
    q.set_state(run.id, "cancelled")
    row = q.set_state(run.id, "queued")  # the user's retry: now, with a fresh budget
    assert row.not_before is None and row.auto_retries == 0 and row.error is None
    assert q.claim(run.id) is not None
