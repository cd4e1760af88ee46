"""Persistent run queue in SQLite (WAL) and the run state machine.

The states and their legal moves are in selvad.runs.records (re-exported here with `Run`,
`Request` and the other record types).

A run queued again with `retry_at` (an automatic retry after its child was killed) waits
until then: `next_run` and `claim` skip it while `not_before` lies in the future, and
`auto_retries` counts those retries (a manual retry resets it). While a run is active its
`error` column may hold a note for `selvad status` (e.g. that its child has stalled). A
queued run held by `hold` carries the note WAITING (its dataset has errors) and is skipped;
a queued render that waits for its job's first finished training run is noted by `note_queued`;
`supersede` cancels queued, never started runs a newer config or dataset replaced, noted
"superseded by RUN" (such a run never counts as a duplicate).

The CLI never talks to the daemon directly: it writes rows into `requests` (cancel, retry,
enqueue, skip, render) that the daemon reads with `pending_requests` and marks handled. Each thread
gets its own connection; writes run in `BEGIN IMMEDIATE` transactions so that two
processes never claim the same run. run is identified by its config hash plus its manifest hash (see selvad.datasets.manifest, whose
helpers are re-exported here).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selvad.datasets.manifest import AUDIO_EXTENSIONS, dataset_manifest, manifest_hash
from selvad.runs.queuedb import create_or_upgrade
from selvad.runs.records import (
    ACTIONS,
    ACTIVE,
    KINDS,
    STATES,
    SUPERSEDED,
    TERMINAL,
    WAITING,
    IllegalTransition,
    Request,
    Run,
    canonical_json,
    config_digest,
    new_run_id,
    transition,
)

__all__ = [
    "ACTIONS",
    "ACTIVE",
    "AUDIO_EXTENSIONS",
    "KINDS",
    "STATES",
    "SUPERSEDED",
    "TERMINAL",
    "WAITING",
    "IllegalTransition",
    "Request",
    "Run",
    "RunQueue",
    "config_digest",
    "dataset_manifest",
    "manifest_hash",
    "new_run_id",
    "transition",
]

JOB_ACTIONS = ("enqueue", "render")  # requests that name a job, not a run


class RunQueue:
    """The queue database at `path` (created on first use); safe across threads/processes.

    `busy_timeout` (seconds) is how long a writer waits for another one's lock. Use
    `close()` to close the calling thread's connection.
    """

    def __init__(self, path: Path | str, busy_timeout: float = 10.0) -> None:
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        create_or_upgrade(self._conn())

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # durable enough with WAL
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def transaction(self) -> Any:
        """A write transaction (BEGIN IMMEDIATE) on this thread's connection, as a context
        manager yielding the connection (for the other tables of the database)."""
        return self._write()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (for reads of the other tables)."""
        return self._conn()

    def close(self) -> None:
        """Close this thread's connection (others close when their thread ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- runs ---------------------------------------------------------------------------

    def enqueue(self, job: str, dataset: str, config: dict[str, Any], manifest: dict[str, Any],
                priority: int = 0, kind: str = "train", sweep_id: str = "",
                config_hash: str | None = None, force: bool = False,
                rerun_states: tuple[str, ...] = ("failed", "cancelled")) -> Run | None:
        """Queue a run; return it, or None if the same run already exists in a state other
        than `rerun_states` ("the same job on the same data is never queued twice").

        Identity is (job, sweep_id, kind, config_hash, manifest_hash); `config_hash`
        defaults to `config_digest(config)`. A superseded run never counts as the same run. `force` skips the check
        (an explicit `selvad enqueue`, the page's Train now) against finished runs only: an
        identical run that is still queued or running is never queued a second time, however
        often it is asked for. Automatic triggers pass `rerun_states=()` so that a
        run the user cancelled (or one that failed) is not revived by a touched file.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown run kind {kind!r}; expected one of {', '.join(KINDS)}")
        chash = config_hash or config_digest(config)
        mhash = manifest_hash(manifest)
        now = time.time()
        if force:
            rerun_states = TERMINAL
        with self._write() as db:
            marks = ", ".join("?" * len(rerun_states))
            dup = db.execute(
                "SELECT id FROM runs WHERE job=? AND sweep_id=? AND kind=? AND config_hash=?"
                f" AND manifest_hash=? AND state NOT IN ({marks}) AND NOT (state='cancelled'"
                " AND COALESCE(error, '') LIKE ?) LIMIT 1",  # NULL error: not superseded
                (job, sweep_id, kind, chash, mhash, *rerun_states, SUPERSEDED + "%"),
            ).fetchone()
            if dup is not None:
                return None
            run_id = new_run_id(now)
            while db.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
                run_id = new_run_id(now)
            db.execute(
                "INSERT INTO runs (id, job, sweep_id, dataset, kind, state, priority, config_json,"
                " config_hash, manifest_json, manifest_hash, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (run_id, job, sweep_id, dataset, kind, priority, canonical_json(config), chash,
                 canonical_json(manifest), mhash, now, now),
            )
        return self.get(run_id)

    def get(self, run_id: str) -> Run | None:
        """The run with id `run_id`, or None."""
        row = self._conn().execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        return Run.from_row(row) if row else None

    def next_run(self, now: float | None = None) -> Run | None:
        """The queued run to start next: extraction runs first, then priority, then age;
        runs waiting for an automatic retry (`not_before` after `now`) or held by `hold`
        are skipped."""
        runs = self.startable(now, limit=1)
        return runs[0] if runs else None

    def startable(self, now: float | None = None, limit: int = 100) -> list[Run]:
        """The queued runs that may start, in the order `next_run` takes them."""
        rows = self._conn().execute(
            "SELECT * FROM runs WHERE state='queued' AND (not_before IS NULL OR not_before<=?)"
            " AND (error IS NULL OR error != ?)"
            " ORDER BY kind='extract' DESC, priority DESC, created_at ASC, id ASC LIMIT ?",
            (time.time() if now is None else now, WAITING, int(limit)),
        ).fetchall()
        return [Run.from_row(r) for r in rows]

    def claim(self, run_id: str, pid: int | None = None, device: str | None = None) -> Run | None:
        """Move a queued run to `extracting` for this process on `device` (a slot label);
        None if it is not queued any more (someone else claimed or cancelled it) or still
        waits for its automatic retry time. Counts an attempt."""
        now = time.time()
        with self._write() as db:
            cur = db.execute(
                "UPDATE runs SET state='extracting', started_at=?, updated_at=?, pid=?,"
                " attempts=attempts+1, finished_at=NULL, error=NULL, not_before=NULL, device=?"
                " WHERE id=? AND state='queued' AND (not_before IS NULL OR not_before<=?)",
                (now, now, os.getpid() if pid is None else pid, device, run_id, now),
            )
            claimed = cur.rowcount == 1
        return self.get(run_id) if claimed else None

    def set_state(self, run_id: str, new: str, error: str | None = None,
                  output_dir: str | None = None, retry_at: float | None = None) -> Run:
        """Change a run's state through `transition` (raising IllegalTransition or KeyError).

        Final states set `finished_at`; `error` is kept on `failed`; going back to
        `queued` clears the pid and finish time and stores `error` (the reason, or None).
        `retry_at` (unix seconds, `queued` only) makes it an automatic retry: the run waits
        until then and `auto_retries` counts up; a retry of a failed or cancelled run
        without it (the user's) resets that count. `output_dir` is stored when given.
        """
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT state FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"no run with id {run_id!r}")
            transition(row["state"], new)
            sets: dict[str, Any] = {"state": new, "updated_at": now}
            if new in TERMINAL:
                sets.update(finished_at=now, pid=None, error=error)
            elif new == "queued":
                sets.update(finished_at=None, pid=None, error=error, not_before=retry_at)
                if retry_at is None and row["state"] in TERMINAL:
                    sets["auto_retries"] = 0
            elif error is not None:
                sets["error"] = error
            if output_dir is not None:
                sets["output_dir"] = output_dir
            cols = ", ".join(f"{k}=?" for k in sets)
            if new == "queued" and retry_at is not None:
                cols += ", auto_retries=auto_retries+1"
            db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*sets.values(), run_id))
        run = self.get(run_id)
        assert run is not None
        return run

    def update_progress(self, run_id: str, *, step: int | None = None,
                        total_steps: int | None = None, loss: float | None = None,
                        samples_per_s: float | None = None, eta_s: float | None = None) -> None:
        """Store the latest progress of a run (fields left None keep their value)."""
        vals = {"step": step, "total_steps": total_steps, "loss": loss,
                "samples_per_s": samples_per_s, "eta_s": eta_s}
        sets = {k: v for k, v in vals.items() if v is not None}
        sets["updated_at"] = time.time()
        cols = ", ".join(f"{k}=?" for k in sets)
        with self._write() as db:
            db.execute(f"UPDATE runs SET {cols} WHERE id=?", (*sets.values(), run_id))

    def retry_waiting(self) -> list[Run]:
        """Queued runs that wait for an automatic retry (`not_before` set)."""
        rows = self._conn().execute(
            "SELECT * FROM runs WHERE state='queued' AND not_before IS NOT NULL").fetchall()
        return [Run.from_row(r) for r in rows]

    def release_retry(self, run_id: str) -> bool:
        """End a queued run's automatic-retry wait now (clear `not_before`); False when it
        is no longer a queued run."""
        with self._write() as db:
            cur = db.execute("UPDATE runs SET not_before=NULL, updated_at=? WHERE id=? AND"
                             " state='queued'", (time.time(), run_id))
        return cur.rowcount == 1

    def set_note(self, run_id: str, note: str | None) -> None:
        """Show `note` (None clears it) in the `error` column of an active run, e.g. that
        its child stalled; a run that has ended keeps its own error."""
        self._note(run_id, note, ACTIVE)

    def note_queued(self, run_id: str, note: str | None) -> None:
        """Show `note` (None clears it) on a run that is still queued, e.g. why a render
        waits; a run that has started or ended keeps its own note or error."""
        self._note(run_id, note, ("queued",))

    def _note(self, run_id: str, note: str | None, states: tuple[str, ...]) -> None:
        """Set the `error` column of `run_id` to `note` while the run is in one of `states`."""
        with self._write() as db:
            db.execute(f"UPDATE runs SET error=?, updated_at=? WHERE id=? AND state IN "
                       f"({', '.join('?' * len(states))})", (note, time.time(), run_id, *states))

    def set_device(self, run_id: str, device: str) -> None:
        """Record where a run executes (a Ray run learns its node once placed)."""
        with self._write() as db:
            db.execute("UPDATE runs SET device=?, updated_at=? WHERE id=?",
                       (device, time.time(), run_id))

    def supersede(self, job: str, keep: set[tuple[str, str, str]], by: str) -> list[str]:
        """Cancel the queued, never started training runs of `job` whose (sweep_id,
        config_hash, manifest_hash) is not in `keep`, noted "superseded by `by`" (a run
        that already trained some steps is kept: it resumes). Returns their ids."""
        with self._write() as db:
            rows = db.execute("SELECT id, sweep_id, config_hash, manifest_hash FROM runs WHERE"
                              " job=? AND kind='train' AND state='queued' AND attempts=0",
                              (job,)).fetchall()
            ids = [r["id"] for r in rows if (r["sweep_id"], r["config_hash"],
                                             r["manifest_hash"]) not in keep]
            now = time.time()
            for run_id in ids:
                db.execute("UPDATE runs SET state='cancelled', error=?, finished_at=?,"
                           " updated_at=? WHERE id=?", (f"{SUPERSEDED} {by}", now, now, run_id))
        return ids

    def refresh_manifest(self, run_id: str, manifest: dict[str, Any]) -> bool:
        """Give a queued, never started run the dataset's current `manifest` (the files it
        will train on); False when the run is not queued or has started before."""
        with self._write() as db:
            cur = db.execute("UPDATE runs SET manifest_json=?, manifest_hash=?, updated_at=?"
                             " WHERE id=? AND state='queued' AND attempts=0",
                             (canonical_json(manifest), manifest_hash(manifest), time.time(), run_id))
            return cur.rowcount == 1

    def hold(self, jobs: Iterable[str], held: bool) -> list[str]:
        """Hold back (`held`) or release the queued training and extraction runs of `jobs` (a
        render uses a trained adapter, not the dataset): a held run carries the WAITING note
        and `next_run` skips it. Returns the ids whose note changed."""
        jobs = list(jobs)
        if not jobs:
            return []
        marks = ", ".join("?" * len(jobs))
        where = f"state='queued' AND kind!='render' AND job IN ({marks}) AND " + (
            "error IS NULL" if held else "error=?")
        args = (*jobs,) if held else (*jobs, WAITING)
        with self._write() as db:
            ids = [r["id"] for r in db.execute(f"SELECT id FROM runs WHERE {where}", args)]
            db.execute(f"UPDATE runs SET error=?, updated_at=? WHERE {where}",
                       (WAITING if held else None, time.time(), *args))
        return ids

    def list_runs(self, job: str | None = None, states: Iterable[str] | None = None,
                  limit: int | None = None) -> list[Run]:
        """Runs, oldest first, optionally only of `job` and/or in `states`."""
        where, args = [], []
        if job is not None:
            where.append("job=?")
            args.append(job)
        if states is not None:
            states = list(states)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM runs" + (f" WHERE {' AND '.join(where)}" if where else "")
        sql += " ORDER BY created_at DESC, id DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"  # the newest `limit` runs
        rows = self._conn().execute(sql, args).fetchall()
        return [Run.from_row(r) for r in reversed(rows)]

    def interrupted_runs(self) -> list[Run]:
        """Runs left `extracting`/`training` (found at start-up: the daemon died mid-run)."""
        return self.list_runs(states=ACTIVE)

    # -- requests -----------------------------------------------------------------------

    def request(self, action: str, run_id: str | None = None, job: str | None = None) -> int:
        """Record a CLI request; cancel/retry/skip need `run_id`, enqueue and render need
        `job`. Returns the request id."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
        if action in JOB_ACTIONS and not job:
            raise ValueError(f"a {action!r} request needs a job name")
        if action not in JOB_ACTIONS and not run_id:
            raise ValueError(f"a {action!r} request needs a run id")
        with self._write() as db:
            cur = db.execute(
                "INSERT INTO requests (action, run_id, job, created_at) VALUES (?, ?, ?, ?)",
                (action, run_id, job, time.time()),
            )
            return int(cur.lastrowid or 0)

    def pending_requests(self) -> list[Request]:
        """Requests not handled yet, oldest first."""
        rows = self._conn().execute(
            "SELECT * FROM requests WHERE handled_at IS NULL ORDER BY id"
        ).fetchall()
        return [Request(**dict(r)) for r in rows]

    def mark_handled(self, request_id: int, result: str = "") -> None:
        """Mark a request done, with a short `result` the CLI can show."""
        with self._write() as db:
            db.execute("UPDATE requests SET handled_at=?, result=? WHERE id=?",
                       (time.time(), result, request_id))

    def get_request(self, request_id: int) -> Request | None:
        """One request by id (the CLI polls it to show the daemon's answer)."""
        row = self._conn().execute("SELECT * FROM requests WHERE id=?", (request_id,)).fetchone()
        return Request(**dict(row)) if row else None
