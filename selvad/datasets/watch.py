"""Watching dataset roots and the jobs directory: settle, coalesce, reconcile.

Raw filesystem events (watchdog: inotify, or polling for network filesystems) only mark a
path as "look at this". A ticker thread then stats the marked paths; a file counts once its
size and mtime have been unchanged for `settle_seconds` (`SettleTracker`, pure). Settled
changes are coalesced per dataset: one `DatasetEvent` fires when none of that dataset's
files is still settling, so copying 50 clips gives one event, not 50. `full_scan()` compares
the trees with what is known and feeds differences through the same path; it runs at start
(so every existing dataset and job is reported once) and from the periodic rescan.

Layout: every subdirectory of a dataset root is a dataset; its top-level files are its
content (deeper files are ignored). Job files are `<jobs_dir>/*.toml`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_IGNORE",
    "DatasetEvent",
    "JobEvent",
    "SettleTracker",
    "Watcher",
    "is_ignored",
]

DEFAULT_IGNORE = (".*", "*.part", "*.tmp", "~*", ".syncthing.*", "*.crdownload")
_log = logging.getLogger("selvad.datasets.watch")


def is_ignored(name: str, extra: Sequence[str] = ()) -> bool:
    """True for hidden, temporary and partial-download file names (plus `extra` globs)."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in (*DEFAULT_IGNORE, *extra))


@dataclass(frozen=True)
class DatasetEvent:
    """A dataset's settled content changed (`changed`) or its directory went away
    (`removed`); `files` are the names that were added, modified or deleted."""

    root: Path
    name: str
    change: str  # "changed" | "removed"
    files: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """The dataset directory."""
        return self.root / self.name


@dataclass(frozen=True)
class JobEvent:
    """A job file was created, modified (after settling) or deleted."""

    path: Path
    change: str  # "created" | "modified" | "deleted"

    @property
    def name(self) -> str:
        """The job name (file stem)."""
        return self.path.stem


class SettleTracker:
    """Decides when files are stable: same (size, mtime) for `settle_seconds` of `now`.

    Pure: the caller supplies the observations and the clock (monotonic seconds).
    """

    def __init__(self, settle_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self._pending: dict[str, tuple[int, int, float]] = {}  # path -> size, mtime, since

    def observe(self, path: str, size: int, mtime: int | float, now: float) -> None:
        """Record the current size and mtime of `path`; any change restarts its clock."""
        old = self._pending.get(path)
        if old is None or (old[0], old[1]) != (size, mtime):
            self._pending[path] = (size, mtime, now)  # type: ignore[assignment]

    def forget(self, path: str) -> None:
        """Stop tracking `path` (it was deleted)."""
        self._pending.pop(path, None)

    def ready(self, now: float) -> list[str]:
        """Paths stable for at least settle_seconds, sorted; they are no longer tracked."""
        done = sorted(p for p, (_, _, since) in self._pending.items()
                      if now - since >= self.settle_seconds)
        for p in done:
            del self._pending[p]
        return done

    def pending(self) -> list[str]:
        """Paths still settling."""
        return list(self._pending)

    def __contains__(self, path: object) -> bool:
        return path in self._pending


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


class Watcher:
    """Watches `dataset_roots` and `jobs_dir`; calls `on_dataset`/`on_job` from its thread.

    `start()` arms the observer, runs a first `full_scan()` and starts the ticker;
    `stop()` ends both. `tick()` may also be called directly (tests, single-threaded use).
    Callback exceptions are logged and do not stop the watcher.
    """

    def __init__(self, dataset_roots: Iterable[Path], jobs_dir: Path | None, *,
                 on_dataset: Callable[[DatasetEvent], Any], on_job: Callable[[JobEvent], Any],
                 settle_seconds: float = 10.0, use_polling: bool = False,
                 poll_interval: float = 5.0, ignore: Sequence[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.roots = [Path(os.path.abspath(r)) for r in dataset_roots]
        self.jobs_dir = Path(os.path.abspath(jobs_dir)) if jobs_dir is not None else None  # None: folders only
        self.on_dataset, self.on_job = on_dataset, on_job
        self.use_polling, self.poll_interval = use_polling, poll_interval
        self.ignore = tuple(ignore)
        self.clock = clock
        self.tracker = SettleTracker(settle_seconds)
        self.tick_interval = min(0.5, max(0.05, settle_seconds / 4))
        self._lock = threading.RLock()
        self._inbox: list[str] = []  # raw paths from watchdog, processed by tick()
        self._known: dict[str, tuple[int, int]] = {}  # settled files -> (size, mtime_ns)
        self._datasets: set[tuple[Path, str]] = set()
        self._dirty: dict[tuple[Path, str], set[str]] = {}
        self._observer: Any = None
        self._watched: set[Path] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- classification ---------------------------------------------------------------

    def _classify(self, path: str) -> tuple[str, Any]:
        """("job", None) | ("dataset", (root, name)) | ("file", (root, name)) | ("", None)."""
        p = Path(path)
        if self.jobs_dir is not None and p.parent == self.jobs_dir:
            ok = p.suffix == ".toml" and not is_ignored(p.name, self.ignore)
            return ("job", None) if ok else ("", None)
        for root in self.roots:
            try:
                parts = p.relative_to(root).parts
            except ValueError:
                continue
            if not parts or len(parts) > 2 or any(is_ignored(x, self.ignore) for x in parts):
                return "", None
            return ("dataset" if len(parts) == 1 else "file"), (root, parts[0])
        return "", None

    # -- inputs -------------------------------------------------------------------------

    def notice(self, path: str) -> None:
        """Mark `path` as possibly changed (called from watchdog's thread; cheap)."""
        with self._lock:
            self._inbox.append(os.path.abspath(path))

    def full_scan(self) -> None:
        """Reconcile with the filesystem: new or changed files start settling, vanished
        files, datasets and jobs are reported. Also arms watches on roots that appeared."""
        seen: set[str] = set()
        for root in self.roots:
            try:
                entries = [e for e in os.scandir(root)
                           if e.is_dir() and not is_ignored(e.name, self.ignore)]
            except OSError:
                continue
            for ds in entries:
                seen.add(ds.path)
                try:
                    seen.update(e.path for e in os.scandir(ds.path)
                                if not is_ignored(e.name, self.ignore) and e.is_file())
                except OSError:
                    pass
        try:  # not only regular files: the daemon reports a FIFO `*.toml` as an invalid job
            if self.jobs_dir is not None:
                seen.update(e.path for e in os.scandir(self.jobs_dir) if not e.is_dir())
        except OSError:
            pass
        with self._lock:
            gone = [p for p in self._known if p not in seen]
            gone += [str(r / n) for r, n in self._datasets if str(r / n) not in seen]
            self._inbox.extend(sorted(seen) + gone)
        self._arm()

    # -- processing ---------------------------------------------------------------------

    def _mark_dirty(self, key: tuple[Path, str], name: str) -> None:
        self._dirty.setdefault(key, set()).add(name)

    def _process(self, path: str, now: float, events: list[Any]) -> None:
        kind, key = self._classify(path)
        if not kind:
            return
        st = _stat(path)
        if kind == "dataset":
            if st is not None and os.path.isdir(path):
                if key not in self._datasets:
                    self._datasets.add(key)
                    try:  # files copied in before the new directory's watch existed
                        self._inbox.extend(e.path for e in os.scandir(path))
                    except OSError:
                        pass
            elif key in self._datasets:
                self._datasets.discard(key)
                prefix = path + os.sep
                for p in [p for p in self._known if p.startswith(prefix)]:
                    del self._known[p]
                for p in [p for p in self.tracker.pending() if p.startswith(prefix)]:
                    self.tracker.forget(p)
                self._dirty.pop(key, None)
                events.append(DatasetEvent(key[0], key[1], "removed"))
            return
        if st is not None and not os.path.isdir(path):
            if kind == "file":
                self._datasets.add(key)
            sig = (st.st_size, st.st_mtime_ns)
            if path in self.tracker or self._known.get(path) != sig:
                self.tracker.observe(path, *sig, now)
            return
        self.tracker.forget(path)
        if self._known.pop(path, None) is not None:
            if kind == "job":
                events.append(JobEvent(Path(path), "deleted"))
            else:
                self._mark_dirty(key, os.path.basename(path))

    def tick(self, now: float | None = None) -> list[DatasetEvent | JobEvent]:
        """Process marked paths, fire settled and coalesced events; returns the events."""
        now = self.clock() if now is None else now
        events: list[Any] = []
        with self._lock:
            inbox, self._inbox = self._inbox, []
            for path in dict.fromkeys(inbox):
                self._process(path, now, events)
            for path in self.tracker.pending():  # re-stat what is still settling
                self._process(path, now, events)
            for path in self.tracker.ready(now):
                st = _stat(path)
                if st is None:
                    continue
                sig = (st.st_size, st.st_mtime_ns)
                old = self._known.get(path)
                if old == sig:
                    continue  # an event without a content change (touch of a dir, close)
                self._known[path] = sig
                kind, key = self._classify(path)
                if kind == "job":
                    events.append(JobEvent(Path(path), "created" if old is None else "modified"))
                elif kind == "file":
                    self._mark_dirty(key, os.path.basename(path))
            busy = {self._classify(p)[1] for p in self.tracker.pending()}
            for key in [k for k in self._dirty if k not in busy]:
                events.append(DatasetEvent(key[0], key[1], "changed",
                                           tuple(sorted(self._dirty.pop(key)))))
        for ev in events:
            try:
                (self.on_job if isinstance(ev, JobEvent) else self.on_dataset)(ev)
            except Exception:
                _log.exception("watch callback failed for %s", ev)
        return events

    # -- threads ------------------------------------------------------------------------

    def _arm(self) -> None:
        if self._observer is None:
            return
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return
                watcher.notice(os.fsdecode(event.src_path))
                if getattr(event, "dest_path", ""):
                    watcher.notice(os.fsdecode(event.dest_path))

        jobs = [(self.jobs_dir, False)] if self.jobs_dir is not None else []
        for path, recursive in [(r, True) for r in self.roots] + jobs:
            if path in self._watched or not path.is_dir():
                continue
            try:
                self._observer.schedule(Handler(), str(path), recursive=recursive)
                self._watched.add(path)
            except OSError as exc:
                _log.warning("cannot watch %s: %s", path, exc)

    def start(self) -> None:
        """Arm the observer, scan once, and start the ticker thread."""
        if self.use_polling:
            from watchdog.observers.polling import PollingObserver

            self._observer = PollingObserver(timeout=self.poll_interval)
        else:
            from watchdog.observers import Observer

            self._observer = Observer()
        self._arm()
        self._observer.start()
        self.full_scan()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="selvad-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_interval):
            try:
                self.tick()
            except Exception:  # keep watching whatever one tick hit
                _log.exception("watch tick failed")

    def stop(self) -> None:
        """Stop the ticker and the observer (waits for both threads)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join()
            self._observer = None
            self._watched.clear()
