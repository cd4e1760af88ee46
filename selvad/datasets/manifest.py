"""Dataset manifests: which training files a dataset holds, with content hashes.

A run records the manifest of its dataset; the manifest hash (names, sizes, content
hashes, not mtimes) decides whether "the same data" was already trained on.

Only regular files inside the dataset directory are opened and hashed. An entry that is
not (a FIFO or directory named like a clip, a link out of the directory, a broken link, a
file the daemon may not read) is listed with an empty hash and a `problem`, so one bad file
never hides the dataset: validation reports it with every other finding.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from selva_engine.data.dataset_file import DATASET_FILE
from selva_engine.data.videos import MASK_SUFFIXES, VIDEO_SUFFIXES
from selva_engine.errors import open_error
from selva_engine.io import open_regular

__all__ = ["AUDIO_EXTENSIONS", "FileKey", "dataset_manifest", "manifest_hash"]

# What identifies one version of a file for the hash cache:
# (absolute path, size in bytes, mtime_ns, inode, ctime_ns)
FileKey = tuple[str, int, int, int, int]

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".m4a", ".opus")


def _is_dataset_file(name: str) -> bool:
    if name.startswith(".") or name.startswith("~"):
        return False
    low = name.lower()
    return (low.endswith((".npz", *VIDEO_SUFFIXES, *MASK_SUFFIXES)) or low.endswith(AUDIO_EXTENSIONS)
            or low in ("prompts.txt", DATASET_FILE))


def _sha256(f: BinaryIO) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


class HashCache(Protocol):
    """What `dataset_manifest` needs of a cache: a dict or a selvad.datasets.hashcache.FileHashCache."""

    def get(self, key: FileKey, default: None = None, /) -> str | None: ...

    def __setitem__(self, key: FileKey, digest: str, /) -> None: ...


def _entry(directory: Path, name: str, cache: HashCache | None) -> dict[str, Any] | None:
    """One manifest entry: hashed when it is a regular file inside `directory`, else with
    an empty hash and the `problem`; None when it vanished meanwhile."""
    path = directory / name
    try:
        lst = os.lstat(path)
        f = open_regular(path, directory)
    except FileNotFoundError:
        if not os.path.lexists(path):
            return None  # vanished while scanning
        lst = os.lstat(path)
        return {"name": name, "size": lst.st_size, "mtime_ns": lst.st_mtime_ns, "sha256": "",
                "problem": open_error(path, FileNotFoundError(str(path))).problem}
    except OSError as exc:
        return {"name": name, "size": lst.st_size, "mtime_ns": lst.st_mtime_ns, "sha256": "",
                "problem": open_error(path, exc).problem}
    with f:
        st = os.fstat(f.fileno())
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
        digest = cache.get(key) if cache is not None else None
        if digest is None:
            digest = _sha256(f)
            if cache is not None:
                cache[key] = digest
    return {"name": name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}


def dataset_manifest(directory: Path | str, cache: HashCache | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Describe the training files of a dataset directory (top level only).

    Returns {"files": [{"name", "size", "mtime_ns", "sha256"}, ...]} sorted by name, for
    `.npz`, videos and their `.mask.png` masks, audio files, `prompts.txt` and `dataset.toml` (hidden and `~` files skipped). Only regular files
    inside `directory` are opened and hashed; any other entry with such a name gets
    "sha256": "" and a "problem" sentence (see the module docstring), never an exception.
    `cache` maps a FileKey (path, size, mtime_ns, inode, ctime_ns) to a hash so unchanged
    files are not read again; it is updated in place. Files that vanish while scanning are
    left out. `progress(done, total)` is called as each file is reached (the daemon keeps
    its systemd watchdog fed through it). Raises OSError only when the directory itself
    cannot be listed.
    """
    directory = Path(directory)
    names = sorted(e.name for e in os.scandir(directory) if _is_dataset_file(e.name))
    files = []
    for done, name in enumerate(names, 1):
        if progress is not None:
            progress(done, len(names))
        entry = _entry(directory, name, cache)
        if entry is not None:
            files.append(entry)
    return {"files": files}


def manifest_hash(manifest: dict[str, Any]) -> str:
    """sha256 over the (name, size, sha256) of each file (and its problem, for a file that
    was not read): a touch that keeps the content (new mtime) does not change it, any edit,
    addition, removal or rename does."""
    ident = [[f["name"], f["size"], f["sha256"]] + ([f["problem"]] if f.get("problem") else [])
             for f in manifest.get("files", [])]
    text = json.dumps(ident, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()
