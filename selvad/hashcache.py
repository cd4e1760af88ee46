"""Content hashes of dataset files, kept across daemon restarts.

Hashing reads every byte of every clip, so a daemon that forgot its hashes at each start
would re-read whole datasets (gigabytes of audio) before it could queue anything. The
cache maps an absolute path to (size, mtime_ns, sha256) in a small SQLite file under the
state directory; an entry counts only while the file's size and mtime are unchanged.
Used from the daemon's main thread only.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

__all__ = ["FileHashCache"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_hashes (
    path TEXT PRIMARY KEY,      -- absolute path
    size INTEGER NOT NULL,      -- bytes
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
"""

Key = tuple[str, int, int]  # (absolute path, size, mtime_ns), as selvad.manifest builds it


class FileHashCache:
    """`get(key)` / `cache[key] = digest` over the SQLite file at `path` (created on first
    use), the interface `selvad.manifest.dataset_manifest` expects of its cache.

    An unreadable or corrupt database file is moved aside (`<name>.corrupt`) and a fresh
    one started: losing the cache only costs re-hashing, never the daemon.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError:
            os.replace(self.path, self.path.with_name(self.path.name + ".corrupt"))
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def get(self, key: Key, default: str | None = None) -> str | None:
        """The stored hash of key's path when its size and mtime still match, else `default`."""
        path, size, mtime_ns = key
        row = self._conn.execute("SELECT size, mtime_ns, sha256 FROM file_hashes WHERE path = ?",
                                 (path,)).fetchone()
        if row is None or (row[0], row[1]) != (size, mtime_ns):
            return default
        return row[2]

    def __setitem__(self, key: Key, digest: str) -> None:
        path, size, mtime_ns = key
        self._conn.execute("INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, sha256) "
                           "VALUES (?, ?, ?, ?)", (path, size, mtime_ns, digest))

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0])

    def prune_missing(self) -> int:
        """Forget files that no longer exist; returns how many entries were removed."""
        gone = [p for (p,) in self._conn.execute("SELECT path FROM file_hashes")
                if not os.path.isfile(p)]
        self._conn.executemany("DELETE FROM file_hashes WHERE path = ?", [(p,) for p in gone])
        return len(gone)

    def close(self) -> None:
        """Close the database connection."""
        self._conn.close()
