"""A damaged queue database at start-up: every kind of damage is recovered from the backup and
the output tree (no finished run trained again, no history lost beyond the backup and what
the run directories hold); only when nothing can restore it does opening refuse, naming
the file and the fix."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from selva_engine.training.options import TrainConfig
from selvad.runs.queue import RunQueue
from selvad.runs.recovery import (
    QueueUnrecoverable,
    backup,
    backup_path,
    check,
    open_queue,
)
from selvad.runs.rundir import write_run_toml

MANIFEST = {"files": [{"name": "a.mp4", "size": 10, "sha256": "ab" * 32}]}


def _finish(q: RunQueue, out: Path, job: str, lr: float) -> str:
    """A training run of `job` that ended (done) with its run directory, as the daemon leaves it."""
    cfg = TrainConfig(lr=lr)
    run = q.enqueue(job, "ds", cfg.to_dict(), MANIFEST)
    assert run is not None
    for state in ("extracting", "training", "done"):
        q.set_state(run.id, state)
    run_dir = out / job / run.id
    run_dir.mkdir(parents=True)
    write_run_toml(run_dir / "run.toml", q.get(run.id), cfg)  # type: ignore[arg-type]
    (run_dir / "progress.jsonl").write_text('{"step": 20, "loss": 0.5}\n')
    (run_dir / "adapter_final.pt").write_bytes(b"weights")
    return run.id


def _crashed_tree(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """A state dir and output tree as a daemon killed mid-way leaves them: run A is in the
    backup, run B only in the WAL (and its run directory). Returns (db, out, [A, B])."""
    src = tmp_path / "src"
    out = src / "out"
    q = RunQueue(src / "state" / "queue.sqlite3")
    q.connection().execute("PRAGMA wal_autocheckpoint = 0")  # B stays in the WAL
    a = _finish(q, out, "job-a", 1e-4)
    q.connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup(q)
    b = _finish(q, out, "job-b", 2e-4)
    dst = tmp_path / "dst"
    shutil.copytree(src, dst)  # the files as they lie while the connection is still open
    q.close()
    return dst / "state" / "queue.sqlite3", dst / "out", [a, b]


def _scribble(path: Path, offset: int, n: int = 64) -> None:
    rng = random.Random(7)
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(bytes(rng.randrange(256) for _ in range(n)))


def _truncate(db: Path, frac: float) -> None:
    os.truncate(db, int(db.stat().st_size * frac))
    for side in ("-wal", "-shm"):
        db.with_name(db.name + side).unlink(missing_ok=True)


def _replace(db: Path, make: Callable[[Path], object]) -> None:
    for side in ("", "-wal", "-shm"):
        db.with_name(db.name + side).unlink(missing_ok=True)
    make(db)


def _foreign(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()


CORRUPTIONS: dict[str, Callable[[Path], object]] = {
    "truncated to 0 bytes": lambda db: _truncate(db, 0),
    "truncated to 50 %": lambda db: _truncate(db, 0.5),
    "random bytes in the header": lambda db: _scribble(db, 0, 100),
    "random bytes in a page": lambda db: _scribble(db, 6 * 4096, 4096),  # one the WAL lacks
    "garbage WAL": lambda db: _scribble(db.with_name(db.name + "-wal"), 0, 4096),
    "missing WAL, stale SHM": lambda db: db.with_name(db.name + "-wal").unlink(),
    "another program's database": lambda db: _replace(db, _foreign),
    "a directory in its place": lambda db: _replace(db, lambda p: p.mkdir()),
    "read-only": lambda db: db.chmod(0o444),
    "a text file": lambda db: _replace(db, lambda p: p.write_text("not a database\n")),
    "a dangling symlink": lambda db: _replace(db, lambda p: p.symlink_to(p.parent / "gone")),
    "deleted": lambda db: _replace(db, lambda p: None),
}
# damage SQLite itself survives (it ignores a WAL whose checksums fail and rebuilds a stale
# SHM; the missing rows come back from the run directories), or root can write anyway
SURVIVED = {"garbage WAL", "missing WAL, stale SHM", "read-only", "deleted"}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_a_damaged_database_is_recovered_and_no_finished_run_is_retrained(
        tmp_path: Path, kind: str) -> None:
    db, out, finished = _crashed_tree(tmp_path)
    CORRUPTIONS[kind](db)
    queue, rec = open_queue(db, out)
    try:
        assert check(db) is None
        for run_id in finished:  # nothing lost: A from the backup (or the file), B from its dir
            run = queue.get(run_id)
            assert run is not None and run.state == "done", (kind, run_id, rec)
        for job, lr in (("job-a", 1e-4), ("job-b", 2e-4)):  # the watcher's re-enqueue: refused
            assert queue.enqueue(job, "ds", TrainConfig(lr=lr).to_dict(), MANIFEST,
                                 rerun_states=()) is None, (kind, job)
        assert rec.problem is not None or kind in SURVIVED, kind
        if rec.problem is not None:
            assert "\n" not in rec.problem
            assert rec.moved_to is not None and os.path.lexists(rec.moved_to)
            assert rec.moved_to.name.startswith("queue.sqlite3.damaged-")
    finally:
        queue.close()


def test_an_unfinished_run_comes_back_failed_with_a_note_saying_retry_resumes(
        tmp_path: Path) -> None:
    db, out, _ = _crashed_tree(tmp_path)
    (out / "job-b").rename(out / "job-c")  # a run the backup does not know, never finished
    run_dir = next((out / "job-c").iterdir())
    (run_dir / "adapter_final.pt").unlink()
    _truncate(db, 0.5)
    queue, rec = open_queue(db, out)
    restored = queue.get(run_dir.name)
    assert restored is not None and restored.state == "failed" and restored.step == 20
    assert "retry" in (restored.error or "") and rec.runs_restored == [run_dir.name]
    queue.close()


def test_nothing_to_restore_from_refuses_naming_the_file_and_the_fix(tmp_path: Path) -> None:
    db = tmp_path / "state" / "queue.sqlite3"
    db.parent.mkdir()
    db.write_bytes(b"\0" * 1000)
    with pytest.raises(QueueUnrecoverable) as err:
        open_queue(db, tmp_path / "out")
    message = str(err.value)
    assert str(db) in message and "mv " in message and "\n" not in message
    assert db.read_bytes() == b"\0" * 1000  # left where it was for the user to decide


def test_backup_is_a_consistent_copy_taken_while_the_queue_is_open(tmp_path: Path) -> None:
    q = RunQueue(tmp_path / "queue.sqlite3")
    run = q.enqueue("j", "d", {}, {})
    assert run is not None
    dest = backup(q)
    assert dest == backup_path(q.path) and check(dest) is None
    assert RunQueue(dest).get(run.id) is not None
