"""What the daemon last saw of each job file and dataset (the queue database's `watched`).

Per job file (by name) and dataset (by absolute directory) one row: its fingerprint (the
job file's sha256, the dataset's manifest hash) and, when it blocks training, the problem
in one line. The fingerprints survive restarts, so a restart or SIGHUP that finds nothing
changed is not reported as a change; the problems are what `selvad status` lists under
"problems" (the daemon writes them, the CLI only reads).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from selvad.runs.queue import RunQueue

__all__ = ["Watched", "WatchedTable"]


@dataclass(frozen=True)
class Watched:
    """One row: `kind` is "job" or "dataset"; `problem` is None when all is well."""

    kind: str
    name: str
    path: str
    fingerprint: str
    problem: str | None
    updated_at: float


class WatchedTable:
    """The `watched` rows of `queue`'s database."""

    def __init__(self, queue: RunQueue) -> None:
        self.queue = queue

    def get(self, kind: str, name: str) -> Watched | None:
        """The row of (`kind`, `name`), or None."""
        row = self.queue.connection().execute(
            "SELECT * FROM watched WHERE kind=? AND name=?", (kind, name)).fetchone()
        return Watched(**dict(row)) if row else None

    def fingerprint(self, kind: str, name: str) -> str:
        """The last recorded fingerprint ("" when none)."""
        row = self.get(kind, name)
        return row.fingerprint if row else ""

    def record(self, kind: str, name: str, path: str, fingerprint: str | None = None,
               problem: str | None = None) -> None:
        """Store what was seen: the problem (None clears it) and, when given, the
        fingerprint (None keeps the old one)."""
        with self.queue.transaction() as db:
            db.execute(
                "INSERT INTO watched (kind, name, path, fingerprint, problem, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO UPDATE SET"
                " path=excluded.path, problem=excluded.problem, updated_at=excluded.updated_at,"
                " fingerprint=CASE WHEN ? THEN excluded.fingerprint ELSE fingerprint END",
                (kind, name, path, fingerprint or "", problem, time.time(),
                 fingerprint is not None))

    def forget(self, kind: str, name: str) -> None:
        """Drop the row (a deleted job file, a removed dataset)."""
        with self.queue.transaction() as db:
            db.execute("DELETE FROM watched WHERE kind=? AND name=?", (kind, name))

    def problems(self) -> list[Watched]:
        """Rows with a problem: job files first, then datasets, by name."""
        rows = self.queue.connection().execute(
            "SELECT * FROM watched WHERE problem IS NOT NULL ORDER BY kind DESC, name").fetchall()
        return [Watched(**dict(r)) for r in rows]
