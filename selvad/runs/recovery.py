"""A damaged queue database is recovered at start-up, never a crash loop, never a silent wipe.

`open_queue` checks `state/queue.sqlite3` before the daemon uses it: the file must be a
regular, writable SQLite database that passes `PRAGMA quick_check` and holds selvad's `runs`
table (a 0-byte file or another program's database does not). A damaged one is moved aside
as `queue.sqlite3.damaged-<UTC time>` (with its -wal/-shm), the last consistent copy
(`queue.sqlite3.backup`, written with SQLite's online backup API by `backup` after each run
ends) is restored, and the training runs the output tree holds (`<output_root>/<job>/<run>/
run.toml`, its `progress.jsonl` and adapters) that the copy lacks are put back: with an
`adapter_final.pt` as done, otherwise as failed with a note (retry resumes from the newest
checkpoint), so a finished run is never trained again. What was recovered is logged. When
neither a copy nor a run directory exists, `QueueUnrecoverable` says which file and the fix
(the daemon exits 78 with it; the file is left in place).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selvad.runs.queue import RunQueue
from selvad.runs.records import canonical_json

__all__ = ["QueueUnrecoverable", "Recovery", "backup", "backup_path", "check", "open_queue",
           "restore_runs"]

RECOVERED_NOTE = ("recovered from its run directory after the queue database was damaged; "
                  "`selvad retry` resumes it from its newest checkpoint")


class QueueUnrecoverable(RuntimeError):
    """The queue database is damaged and nothing can restore it (one sentence with the fix)."""


@dataclass
class Recovery:
    """What `open_queue` did: the problem found (None: healthy), where the damaged file went,
    the copy restored (the read-only file itself or the backup; None: none), and the run ids
    put back from the output tree."""

    problem: str | None = None
    moved_to: Path | None = None
    restored_from: Path | None = None
    runs_restored: list[str] = field(default_factory=list)


def backup_path(db: Path) -> Path:
    """Where the consistent copy of database `db` lives (`<db>.backup`)."""
    return db.with_name(db.name + ".backup")


def check(db: Path, writable: bool = True) -> str | None:
    """Why `db` cannot be used as the queue database (one phrase), or None when it can (or
    does not exist yet); `writable=False` accepts a read-only file (as a source to copy).
    Opens it read-only; never modifies it."""
    try:
        st = db.lstat()
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_size == 0:
        return "it is empty (0 bytes)"
    if not os.access(db, (os.R_OK | os.W_OK) if writable else os.R_OK):
        return "it is not readable and writable by this user"
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            result = conn.execute("PRAGMA quick_check").fetchall()
            if [tuple(r) for r in result] != [("ok",)]:
                return f"SQLite's integrity check fails ({' '.join(str(result[0][0]).split())})"
            columns = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({' '.join(str(exc).split())})"
    if not {"id", "job", "state", "config_hash", "manifest_hash"} <= columns:
        return "it is not selvad's queue database (no runs table)"
    return None


def backup(queue: RunQueue) -> Path:
    """Copy the queue database to `backup_path` with SQLite's online backup API (a consistent
    snapshot while the daemon goes on), atomically replacing the previous copy."""
    dest = backup_path(queue.path)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    out = sqlite3.connect(tmp)
    try:
        queue.connection().backup(out)
    finally:
        out.close()
    os.replace(tmp, dest)
    return dest


def _move_aside(db: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    aside = db.with_name(f"{db.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        aside, n = db.with_name(f"{db.name}.damaged-{stamp}.{n}"), n + 1
    os.replace(db, aside)
    for suffix in ("-wal", "-shm"):
        side = db.with_name(db.name + suffix)
        if side.exists() or side.is_symlink():
            os.replace(side, aside.with_name(aside.name + suffix))
    return aside


def _restore_copy(db: Path, src: Path) -> bool:
    """Copy consistent database `src` (read-only is fine) to `db`; False when it is not one."""
    if not src.exists() or check(src, writable=False) is not None:
        return False
    tmp = db.with_name(f".{db.name}.{os.getpid()}.restore")
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    out = sqlite3.connect(tmp)
    try:
        source.backup(out)
    finally:
        out.close()
        source.close()
    os.replace(tmp, db)
    return True


def _run_dirs(output_root: Path) -> list[Path]:
    try:
        return sorted(p.parent for p in output_root.glob("*/*/run.toml") if p.is_file())
    except OSError:
        return []


def _last_step(run_dir: Path) -> int | None:
    step = None
    try:
        lines = (run_dir / "progress.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            step = rec["step"]
    return step


def _row_from(run_dir: Path) -> dict[str, Any] | None:
    try:
        doc = tomllib.loads((run_dir / "run.toml").read_text(encoding="utf-8"))
        r = doc["run"]
        mtime = (run_dir / "run.toml").stat().st_mtime
        done = (run_dir / "adapter_final.pt").is_file()
        return {"id": str(r["id"]), "job": str(r["job"]), "sweep_id": str(r.get("sweep_id", "")),
                "dataset": str(r["dataset"]), "kind": "train",
                "state": "done" if done else "failed", "priority": int(r.get("priority", 0)),
                "config_json": canonical_json(doc.get("config", {})),
                "config_hash": str(r["config_hash"]),
                "manifest_json": canonical_json({"files": doc.get("files", [])}),
                "manifest_hash": str(r["manifest_hash"]), "created_at": mtime,
                "started_at": mtime, "finished_at": time.time(),
                "error": None if done else RECOVERED_NOTE, "output_dir": str(run_dir),
                "step": _last_step(run_dir), "attempts": int(r.get("attempt", 1)),
                "updated_at": time.time()}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError,
            ValueError):
        return None


def restore_runs(queue: RunQueue, output_root: Path) -> list[str]:
    """Insert the training runs found under `output_root` that `queue` lacks (by run id);
    returns their ids. Unreadable run.toml files are skipped."""
    added: list[str] = []
    for run_dir in _run_dirs(output_root):
        row = _row_from(run_dir)
        if row is None or queue.get(row["id"]) is not None:
            continue
        cols = ", ".join(row)
        with queue.transaction() as db:
            db.execute(f"INSERT OR IGNORE INTO runs ({cols}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
        added.append(row["id"])
    return added


def open_queue(db: Path, output_root: Path) -> tuple[RunQueue, Recovery]:
    """Open the queue database `db`, recovering it first when `check` finds it damaged (see
    the module docstring). Returns the queue and what was done; raises QueueUnrecoverable
    when it is damaged and neither a backup nor a run directory can restore anything."""
    rec = Recovery(problem=check(db))
    if rec.problem is None:  # runs whose rows a lost WAL took are still put back
        queue = RunQueue(db)
        rec.runs_restored = restore_runs(queue, output_root)
        return queue, rec
    if not backup_path(db).exists() and not _run_dirs(output_root):
        raise QueueUnrecoverable(
            f"{db}: the queue database is damaged ({rec.problem}) and there is no backup "
            f"({backup_path(db).name}) nor run directory under {output_root} to restore it "
            f"from; move it aside (mv {db} {db}.bad) to start with an empty run history")
    rec.moved_to = _move_aside(db)
    # a file that is only read-only is itself the best copy; otherwise the last backup
    for src in (rec.moved_to, backup_path(db)):
        if _restore_copy(db, src):
            rec.restored_from = src
            break
    queue = RunQueue(db)
    rec.runs_restored = restore_runs(queue, output_root)
    return queue, rec
