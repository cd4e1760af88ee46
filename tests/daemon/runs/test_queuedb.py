"""The queue database: an older database gains the new columns; opening and reading an
up-to-date one never needs the write lock; automatic retries wait for their time."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

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


def _before_render_runs(schema: str) -> str:
    """`schema` as it was before the render runs: no 'render' kind or request action."""
    return schema.replace(", 'render')", ")")


def _insert_run(conn: sqlite3.Connection, run_id: str, kind: str, state: str, **extra: object) -> None:
    cols = {"id": run_id, "job": "j", "dataset": "d", "kind": kind, "state": state, "config_json": "{}",
            "config_hash": f"c-{run_id}", "manifest_json": "{}", "manifest_hash": "m", "created_at": 1.0, **extra}
    conn.execute(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                 tuple(cols.values()))


@pytest.mark.parametrize("oldest", [False, True], ids=["before-render", "0.1"])
def test_a_database_from_before_render_runs_keeps_its_runs_and_takes_render_runs(
        tmp_path: Path, oldest: bool) -> None:
    path = tmp_path / "queue.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_before_render_runs(_old_schema() if oldest else SCHEMA))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):  # the old constraint, as it was
        _insert_run(conn, "r0", "render", "queued")
    _insert_run(conn, "r1", "train", "done", finished_at=5.0, error=None, output_dir="/out/j/r1", step=40)
    _insert_run(conn, "r2", "extract", "failed", error="bad clip")
    _insert_run(conn, "r3", "train", "queued", priority=3)
    if not oldest:
        conn.execute("UPDATE runs SET device='cuda:1', auto_retries=2 WHERE id='r1'")
    conn.execute("INSERT INTO requests (action, run_id, created_at) VALUES ('retry', 'r2', 2.0)")
    conn.commit()
    before = {row[0]: row for row in conn.execute("SELECT * FROM runs")} if not oldest else None
    conn.close()

    q = RunQueue(path)
    r1, r2, r3 = q.get("r1"), q.get("r2"), q.get("r3")
    assert (r1.kind, r1.state, r1.finished_at, r1.output_dir, r1.step) == ("train", "done", 5.0, "/out/j/r1", 40)
    assert (r2.kind, r2.state, r2.error) == ("extract", "failed", "bad clip") and r3.priority == 3
    assert q.pending_requests()[0].run_id == "r2"
    if before is not None:  # every column of every row, unchanged
        conn = sqlite3.connect(path)
        assert {row[0]: row for row in conn.execute("SELECT * FROM runs")} == before
        conn.close()
    render = q.enqueue("j", "d", {"video": "/r/j/a.mp4"}, {"files": []}, kind="render", priority=100)
    assert render is not None and q.get(render.id).kind == "render"
    assert q.next_run().id == render.id  # the indexes came back: the queue orders as before
    assert q.request("render", job="j") > 0
    conn = sqlite3.connect(path)
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'"
                                                " AND sql IS NOT NULL")}
    conn.close()
    assert not any(t.endswith("_old") for t in tables) and {"runs_state", "runs_identity"} <= indexes
    q.close()
    # opened again: up to date, nothing rewritten
    again = RunQueue(path)
    assert len(again.list_runs()) == 4 and again.get(render.id).kind == "render"
    again.close()
