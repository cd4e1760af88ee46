"""Dataset file hashes persisted across restarts, and the watchdog fed during long checks."""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import pytest

import selvad.datasets.manifest as manifest_mod
import selvad.datasets.validate as validate_mod
from selvad.datasets.hashcache import FileHashCache
from selvad.datasets.manifest import dataset_manifest
from selvad.datasets.watch import JobEvent
from selvad.demo import make_dataset
from selvad.runs.queue import RunQueue
from selvad.service.daemon import Daemon


@pytest.fixture
def count_hashing(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the files whose bytes are hashed (real hashing, counted)."""
    read: list[str] = []
    real = manifest_mod._sha256

    def counting(f: BinaryIO) -> str:
        read.append(Path(f.name).name)
        return real(f)

    monkeypatch.setattr(manifest_mod, "_sha256", counting)
    return read


def test_cache_matches_on_all_stat_fields_and_persists(tmp_path: Path) -> None:
    db = tmp_path / "state" / "hashes.sqlite3"
    cache = FileHashCache(db)
    cache[("/data/a.wav", 10, 111, 7, 222)] = "aa"
    assert cache.persistent and cache.get(("/data/a.wav", 10, 111, 7, 222)) == "aa"
    assert cache.get(("/data/a.wav", 10, 112, 7, 222)) is None  # touched
    assert cache.get(("/data/a.wav", 11, 111, 7, 222)) is None  # rewritten
    assert cache.get(("/data/a.wav", 10, 111, 8, 222)) is None  # replaced by another file
    assert cache.get(("/data/a.wav", 10, 111, 7, 223)) is None  # same size+mtime, new content
    assert cache.get(("/data/b.wav", 10, 111, 7, 222)) is None
    cache[("/data/a.wav", 11, 112, 7, 224)] = "bb"  # one row per path
    cache.close()
    again = FileHashCache(db)
    assert len(again) == 1 and again.get(("/data/a.wav", 11, 112, 7, 224)) == "bb"


def test_prune_forgets_deleted_files_but_not_unmounted_ones(tmp_path: Path) -> None:
    keep, gone = tmp_path / "keep.wav", tmp_path / "gone.wav"
    keep.write_bytes(b"x")
    offline = tmp_path / "not-mounted" / "clip.wav"  # its directory is missing
    cache = FileHashCache(tmp_path / "h.sqlite3")
    for path in (keep, gone, offline):
        cache[(str(path), 1, 1, 1, 1)] = path.name
    seen: list[tuple[int, int]] = []
    assert cache.prune_missing(progress=lambda done, total: seen.append((done, total))) == 1
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert len(cache) == 2 and cache.get((str(gone), 1, 1, 1, 1)) is None
    assert cache.get((str(offline), 1, 1, 1, 1)) == "clip.wav"


def test_corrupt_cache_file_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    db.write_bytes(b"this is not a database" * 100)
    (tmp_path / "h.sqlite3-wal").write_bytes(b"stale")
    problems: list[str] = []
    cache = FileHashCache(db, on_problem=problems.append)
    assert cache.persistent and len(cache) == 0
    assert (tmp_path / "h.sqlite3.corrupt").read_bytes().startswith(b"this is not")
    wal = tmp_path / "h.sqlite3-wal"  # the stale log never meets the new database
    assert not wal.exists() or b"stale" not in wal.read_bytes()
    assert len(problems) == 1 and "moved aside" in problems[0]


def test_locked_cache_is_not_thrown_away_and_falls_back_to_memory(tmp_path: Path) -> None:
    db = tmp_path / "h.sqlite3"
    first = FileHashCache(db)
    first[("/d/a.wav", 1, 1, 1, 1)] = "aa"
    first.close()
    holder = sqlite3.connect(db, timeout=0)
    holder.execute("PRAGMA locking_mode = EXCLUSIVE")
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the file
    problems: list[str] = []
    cache = FileHashCache(db, on_problem=problems.append)
    cache[("/d/b.wav", 2, 2, 2, 2)] = "bb"
    assert cache.get(("/d/b.wav", 2, 2, 2, 2)) == "bb"
    assert not cache.persistent and problems and "in memory" in problems[0]
    holder.rollback()
    holder.close()
    assert not (tmp_path / "h.sqlite3.corrupt").exists()
    assert FileHashCache(db).get(("/d/a.wav", 1, 1, 1, 1)) == "aa"  # the file survived


def test_unwritable_state_dir_falls_back_to_memory(tmp_path: Path) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the state directory should be")
    problems: list[str] = []
    cache = FileHashCache(blocker / "h.sqlite3", on_problem=problems.append)
    cache[("/d/a.wav", 1, 1, 1, 1)] = "aa"
    assert cache.get(("/d/a.wav", 1, 1, 1, 1)) == "aa" and not cache.persistent and problems


def test_manifest_reads_each_unchanged_file_once(tmp_path: Path, count_hashing: list[str]) -> None:
    data = tmp_path / "birds"
    make_dataset(data, 2)
    db = tmp_path / "h.sqlite3"
    first = dataset_manifest(data, cache=FileHashCache(db))
    hashed = len(count_hashing)
    assert hashed == len(first["files"]) == 4
    assert dataset_manifest(data, cache=FileHashCache(db)) == first  # a new process
    assert len(count_hashing) == hashed
    wav = next(data.glob("*.wav"))
    wav.write_bytes(wav.read_bytes())  # rewritten: new mtime
    os.utime(wav, ns=(time.time_ns(), time.time_ns() + 10**9))
    dataset_manifest(data, cache=FileHashCache(db))
    assert count_hashing[hashed:] == [wav.name]


def _job(tmp_path: Path) -> Path:
    path = tmp_path / "jobs" / "birds.toml"
    path.write_text('dataset = "birds"\nvariant = "tiny_16k"\n[train]\nsteps = 20\n')
    return path


def test_restarted_daemon_does_not_rehash_the_dataset(make_config: Callable[[str], Path],
                                                       tmp_path: Path, count_hashing: list[str]) -> None:
    config = make_config("")
    make_dataset(tmp_path / "datasets" / "birds", 3)
    job = _job(tmp_path)
    for _ in range(2):  # two daemon lifetimes on one state directory
        d = Daemon(config)
        d.queue = RunQueue(d.cfg.paths.queue_path)
        d.events.handle(JobEvent(job, "created"))
        assert d.hashes is not None
        d.hashes.close()
    assert len(count_hashing) == 6  # 3 npz + 3 wav, hashed in the first life only
    assert (tmp_path / "state" / "file_hashes.sqlite3").is_file()


def test_long_validation_keeps_the_watchdog_fed(make_config: Callable[[str], Path], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A dataset slower to check than the watchdog timeout must not get the daemon killed:
    WATCHDOG=1 keeps coming while the main thread validates, with the work in STATUS."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # 0.2 s: fed every 0.1 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    real_check = validate_mod._check_audio

    def slow_check(*args, **kwargs):
        time.sleep(0.15)  # a slow disk: each clip takes longer than half the timeout
        return real_check(*args, **kwargs)

    monkeypatch.setattr(validate_mod, "_check_audio", slow_check)
    config = make_config("")
    make_dataset(tmp_path / "datasets" / "birds", 5)
    d = Daemon(config)
    d.queue = RunQueue(d.cfg.paths.queue_path)
    started = time.monotonic()
    d.events.handle(JobEvent(_job(tmp_path), "created"))
    assert time.monotonic() - started > 0.6  # longer than the whole watchdog timeout
    sock.setblocking(False)
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    sock.close()
    assert sum("WATCHDOG=1" in m for m in messages) >= 4
    # STATUS is rate-limited: the first one names the first long step (hashing the files)
    assert any("STATUS=hashing birds: 1/10 files" in m for m in messages)
    # extraction at once; training once the new job file settled (settle_minutes)
    assert [r.kind for r in d.queue.list_runs()] == ["extract"] and "birds" in d.events.train_due
