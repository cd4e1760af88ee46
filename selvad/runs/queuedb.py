"""The queue database's tables (see selvad.runs.queue) and their upgrades.

`create_or_upgrade` creates missing tables (`watched`, what the daemon last saw of each job
file and dataset and what is wrong with it, came after 0.1), adds the columns newer than
an existing database, and rebuilds a `runs` or `requests` table whose CHECK constraint
predates the render runs (SQLite cannot alter a constraint: the rows are copied into the
table as it is now, in one transaction). It only reads when the database is up to date, so opening the queue never needs
the write lock: `selvad status` answers while another connection holds it.
"""

from __future__ import annotations

import sqlite3

__all__ = ["ADDED_COLUMNS", "SCHEMA", "create_or_upgrade"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    sweep_id TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('train', 'extract', 'render')),
    state TEXT NOT NULL CHECK (state IN
        ('queued', 'extracting', 'training', 'done', 'failed', 'cancelled')),
    priority INTEGER NOT NULL DEFAULT 0,
    config_json TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    manifest_json TEXT NOT NULL,
    manifest_hash TEXT NOT NULL,
    created_at REAL NOT NULL,      -- unix seconds
    started_at REAL,
    finished_at REAL,
    error TEXT,
    output_dir TEXT,
    step INTEGER,
    total_steps INTEGER,
    loss REAL,
    samples_per_s REAL,
    eta_s REAL,                    -- seconds
    updated_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    not_before REAL,               -- unix seconds: an automatic retry waits until then
    auto_retries INTEGER NOT NULL DEFAULT 0,
    device TEXT                    -- where it runs (ran): a slot ("cuda:1") or a Ray node
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, kind, priority, created_at);
CREATE INDEX IF NOT EXISTS runs_identity ON runs (job, sweep_id, kind, config_hash, manifest_hash);
CREATE TABLE IF NOT EXISTS requests (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL CHECK (action IN ('cancel', 'retry', 'enqueue', 'skip', 'render')),
    run_id TEXT,
    job TEXT,
    created_at REAL NOT NULL,
    handled_at REAL,
    result TEXT
);
CREATE TABLE IF NOT EXISTS watched (
    kind TEXT NOT NULL,            -- 'job' | 'dataset' | 'page' | 'render'
    name TEXT NOT NULL,            -- job name | dataset directory (absolute)
    path TEXT NOT NULL,
    fingerprint TEXT NOT NULL DEFAULT '',  -- job file sha256 | dataset manifest hash
    problem TEXT,                  -- why it blocks training (NULL when it does not)
    updated_at REAL NOT NULL,
    PRIMARY KEY (kind, name)
);
"""

# (name, declaration) of the columns added to `runs` after 0.1, in the order they came
ADDED_COLUMNS = (("not_before", "REAL"), ("auto_retries", "INTEGER NOT NULL DEFAULT 0"),
                 ("device", "TEXT"))


# the tables whose CHECK constraint must name the newest value (render runs and requests)
NEWEST_CHECKS = {"runs": "'render'", "requests": "'render'"}


def _statements(table: str) -> list[str]:
    """SCHEMA's CREATE TABLE and CREATE INDEX statements of `table`."""
    out = []
    for stmt in (s.strip() for s in SCHEMA.split(";")):
        if stmt.startswith(f"CREATE TABLE IF NOT EXISTS {table} ") or f" ON {table} (" in stmt:
            out.append(stmt)
    return out


def _old_checks(conn: sqlite3.Connection) -> list[str]:
    rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type='table'").fetchall()
    sql = {name: text or "" for name, text in rows}
    return [t for t, value in NEWEST_CHECKS.items() if value not in sql.get(t, value)]


def _rebuild(conn: sqlite3.Connection, table: str) -> None:
    """Copy `table` into a new one with SCHEMA's constraint (inside the caller's transaction)."""
    cols = ", ".join(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
    for (index,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=?"
                                 " AND sql IS NOT NULL", (table,)).fetchall():
        conn.execute(f"DROP INDEX {index}")
    conn.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    for stmt in _statements(table):
        conn.execute(stmt)
    conn.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {table}_old")
    conn.execute(f"DROP TABLE {table}_old")


def create_or_upgrade(conn: sqlite3.Connection) -> None:
    """Create the tables on `conn` (autocommit mode) if missing, add the missing columns
    and widen old constraints in one write transaction; no write when nothing is missing."""
    conn.executescript(SCHEMA)
    have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    if all(name in have for name, _ in ADDED_COLUMNS) and not _old_checks(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        for name, decl in ADDED_COLUMNS:
            if name not in have:
                conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
        for table in _old_checks(conn):
            _rebuild(conn, table)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
