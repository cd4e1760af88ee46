"""Content hashes of dataset files, kept across daemon restarts.

Hashing reads every byte of every clip, so a daemon that forgot its hashes at each start
would re-read whole datasets (gigabytes of audio) before it could queue anything. The
cache maps an absolute path to its (size, mtime_ns, inode, ctime_ns) and sha256 in a small
SQLite file under the state directory; an entry counts only while all four are unchanged
(ctime cannot be set back by `cp -p`, `rsync -a` or `touch -r`, so a file replaced with
other content of the same size and mtime is still hashed again). Used from the daemon's
main thread only.

Losing the cache only costs re-hashing, so no cache problem ever stops the daemon: a
corrupt file is moved aside (with its -wal/-shm) and a fresh one started; any other
SQLite error (locked, unwritable, I/O) leaves the cache in memory for this lifetime and
is reported through `on_problem`.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from selvad.datasets.manifest import FileKey

__all__ = ["FileHashCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,      -- absolute path
    size INTEGER NOT NULL,      -- bytes
    mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""
_CORRUPT = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


class FileHashCache:
    """`get(key)` / `cache[key] = digest` over the SQLite file at `path` (created on first
    use), the interface `selvad.datasets.manifest.dataset_manifest` expects of its cache. Keys are
    `selvad.datasets.manifest.FileKey` tuples (path, size, mtime_ns, ino, ctime_ns).

    The whole table is read once when the cache opens; lookups are answered from memory
    and every change is written through to the file. `on_problem(message)` hears about a
    cache that had to be moved aside or could not be kept on disk. `persistent` is False
    once the cache lives in memory only.
    """

    def __init__(self, path: Path | str, on_problem: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.on_problem = on_problem or (lambda message: None)
        self._entries: dict[str, tuple[tuple[int, ...], str]] = {}  # path -> (stat, sha256)
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = self._open()
            for path, *stat, digest in self._conn.execute(
                    "SELECT path, size, mtime_ns, ino, ctime_ns, sha256 FROM file_hashes"):
                self._entries[path] = (tuple(stat), digest)
        except (OSError, sqlite3.Error) as exc:
            self._failed(exc)

    @property
    def persistent(self) -> bool:
        """True while hashes are written to the database file."""
        return self._conn is not None

    def _open(self) -> sqlite3.Connection:
        for attempt in (1, 2):
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=1.0)
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
                conn.executescript(_SCHEMA)
                return conn
            except sqlite3.Error as exc:
                conn.close()
                if attempt == 2 or getattr(exc, "sqlite_errorname", "") not in _CORRUPT:
                    raise
                self._move_aside(exc)
        raise AssertionError("unreachable")

    def _move_aside(self, exc: sqlite3.Error) -> None:
        for suffix in ("", "-wal", "-shm"):
            src = self.path.with_name(self.path.name + suffix)
            if src.exists():
                os.replace(src, src.with_name(src.name + ".corrupt"))
        self.on_problem(f"{self.path}: {exc}; moved aside to {self.path.name}.corrupt and "
                        "started a new one (files are hashed again once)")

    def _failed(self, exc: BaseException) -> None:
        """Leave the database: keep working in memory for the rest of this lifetime."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.on_problem(f"{self.path}: {exc}; file hashes are kept in memory until the daemon "
                        "restarts (check the state directory's permissions and free space)")

    def _write(self, sql: str, rows: list[tuple]) -> None:
        """Write `rows` through to the file (nothing once the cache lives in memory only)."""
        if self._conn is None or not rows:
            return
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            self._failed(exc)

    def get(self, key: FileKey, default: str | None = None) -> str | None:
        """The stored hash of key's path while its size, mtime, inode and ctime match, else `default`."""
        path, *stat = key
        entry = self._entries.get(path)
        return entry[1] if entry is not None and entry[0] == tuple(stat) else default

    def __setitem__(self, key: FileKey, digest: str) -> None:
        path, *stat = key
        self._entries[path] = (tuple(stat), digest)
        self._write("INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, ino, ctime_ns, sha256) "
                    "VALUES (?, ?, ?, ?, ?, ?)", [(path, *stat, digest)])

    def __len__(self) -> int:
        return len(self._entries)

    def prune_missing(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Forget files that were deleted: gone while their directory is still there (a
        dataset disk that is not mounted right now keeps its hashes). `progress(done,
        total)` is called as each entry is checked. Returns how many were forgotten."""
        paths = list(self._entries)
        gone = []
        for done, path in enumerate(paths, 1):
            if progress is not None:
                progress(done, len(paths))
            if not os.path.lexists(path) and os.path.isdir(os.path.dirname(path)):
                gone.append(path)
        for path in gone:
            del self._entries[path]
        self._write("DELETE FROM file_hashes WHERE path = ?", [(p,) for p in gone])
        return len(gone)

    def close(self) -> None:
        """Close the database connection (the cache then works in memory)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
