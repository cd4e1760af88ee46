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


def test_a_database_without_the_watched_table_gains_it(tmp_path: Path) -> None:
    from selvad.runs.watched import WatchedTable

    path = tmp_path / "queue.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_old_schema().split("CREATE TABLE IF NOT EXISTS watched")[0])
    conn.close()
    table = WatchedTable(RunQueue(path))
    table.record("job", "j", "/jobs/j.toml", fingerprint="abc", problem="broken")
    table.record("job", "j", "/jobs/j.toml", problem="still broken")  # keeps the fingerprint
    (row,) = table.problems()
    assert (row.fingerprint, row.problem) == ("abc", "still broken")
    table.record("job", "j", "/jobs/j.toml")
    assert table.problems() == [] and table.fingerprint("job", "j") == "abc"
    table.forget("job", "j")
    assert table.get("job", "j") is None


def test_supersede_cancels_only_queued_never_started_other_runs(tmp_path: Path) -> None:
    from selvad.runs.queue import SUPERSEDED

    q = RunQueue(tmp_path / "queue.sqlite3")
    old = q.enqueue("j", "d", {"steps": 1}, {"files": []})
    started = q.enqueue("j", "d", {"steps": 2}, {"files": []})
    new = q.enqueue("j", "d", {"steps": 3}, {"files": []})
    assert old and started and new
    q.claim(started.id)
    q.set_state(started.id, "queued")
    assert q.supersede("j", {("", new.config_hash, new.manifest_hash)}, new.id) == [old.id]
    row = q.get(old.id)
    assert row.state == "cancelled" and row.error == f"{SUPERSEDED} {new.id}"
    assert q.get(started.id).state == q.get(new.id).state == "queued"
    # automatic triggers do not revive a cancelled run, but a superseded one is no duplicate
    assert q.enqueue("j", "d", {"steps": 1}, {"files": []}, rerun_states=()) is not None


def test_held_runs_wait_and_are_released(tmp_path: Path) -> None:
    from selvad.runs.queue import WAITING

    q = RunQueue(tmp_path / "queue.sqlite3")
    run = q.enqueue("j", "d", {}, {})
    other = q.enqueue("k", "d", {}, {})
    assert run and other
    assert q.hold(["j"], held=True) == [run.id] and q.get(run.id).error == WAITING
    assert q.next_run().id == other.id
    q.set_state(other.id, "cancelled")
    assert q.next_run() is None
    assert q.hold(["j"], held=False) == [run.id] and q.next_run().id == run.id
