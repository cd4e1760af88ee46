"""Dataset manifests: which training files a dataset holds, with content hashes.

A run records the manifest of its dataset; the manifest hash (names, sizes, content
hashes, not mtimes) decides whether "the same data" was already trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

__all__ = ["AUDIO_EXTENSIONS", "FileKey", "dataset_manifest", "manifest_hash"]

# What identifies one version of a file for the hash cache:
# (absolute path, size in bytes, mtime_ns, inode, ctime_ns)
FileKey = tuple[str, int, int, int, int]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".m4a", ".opus")


def _is_dataset_file(name: str) -> bool:
    if name.startswith(".") or name.startswith("~"):
        return False
    low = name.lower()
    return low.endswith(".npz") or low.endswith(AUDIO_EXTENSIONS) or low == "prompts.txt"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class HashCache(Protocol):
    """What `dataset_manifest` needs of a cache: a dict or a selvad.datasets.hashcache.FileHashCache."""

    def get(self, key: FileKey, default: None = None, /) -> str | None: ...

    def __setitem__(self, key: FileKey, digest: str, /) -> None: ...


def dataset_manifest(directory: Path | str, cache: HashCache | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Describe the training files of a dataset directory (top level only).

    Returns {"files": [{"name", "size", "mtime_ns", "sha256"}, ...]} sorted by name, for
    `.npz`, audio files and `prompts.txt` (hidden and `~` files skipped). `cache` maps a
    FileKey (path, size, mtime_ns, inode, ctime_ns) to a hash so unchanged files are not
    read again; it is updated in place. Files that vanish while scanning are left out.
    `progress(done, total)` is called as each file is reached (the daemon keeps its systemd
    watchdog fed through it).
    """
    directory = Path(directory)
    files = []
    entries = [e for e in sorted(os.scandir(directory), key=lambda e: e.name)
               if _is_dataset_file(e.name) and e.is_file()]
    for done, entry in enumerate(entries, 1):
        if progress is not None:
            progress(done, len(entries))
        try:
            st = entry.stat()
            key = (os.path.abspath(entry.path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
            digest = cache.get(key) if cache is not None else None
            if digest is None:
                digest = _sha256(Path(entry.path))
                if cache is not None:
                    cache[key] = digest
        except FileNotFoundError:
            continue
        files.append({"name": entry.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "sha256": digest})
    return {"files": files}


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the (name, size, sha256) of each file: a touch that keeps the content
    (new mtime) does not change it, any edit, addition, removal or rename does."""
    ident = [[f["name"], f["size"], f["sha256"]] for f in manifest.get("files", [])]
    text = json.dumps(ident, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
