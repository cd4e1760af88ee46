"""Watching: the pure settle tracker, deterministic ticks, and real watchdog backends."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from selvad.datasets.watch import DatasetEvent, JobEvent, SettleTracker, Watcher, is_ignored


def test_settle_tracker() -> None:
    t = SettleTracker(2.0)
    t.observe("a", 10, 1, now=0.0)
    assert t.ready(1.9) == []
    t.observe("a", 20, 2, now=1.5)  # still growing: clock restarts
    assert t.ready(3.4) == []
    t.observe("a", 20, 2, now=3.0)  # unchanged: clock keeps running
    t.observe("b", 5, 1, now=3.0)
    assert t.ready(3.5) == ["a"] and "a" not in t and "b" in t
    t.forget("b")
    assert t.ready(100.0) == [] and t.pending() == []


def test_zero_settle_is_immediate() -> None:
    t = SettleTracker(0.0)
    t.observe("a", 1, 1, now=5.0)
    assert t.ready(5.0) == ["a"]


@pytest.mark.parametrize("name,ignored", [
    (".hidden.wav", True), ("clip.wav.part", True), ("x.tmp", True), ("~lock", True),
    (".syncthing.clip.wav.tmp", True), ("clip.wav.crdownload", True), ("clip.wav", False),
    ("prompts.txt", False), ("clip.bak", True),
])
def test_is_ignored(name: str, ignored: bool) -> None:
    assert is_ignored(name, extra=["*.bak"]) is ignored


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, object]] = []
        self.lock = threading.Lock()

    def __call__(self, ev: object) -> None:
        with self.lock:
            self.events.append((time.monotonic(), ev))

    def of(self, cls: type) -> list:
        with self.lock:
            return [e for _, e in self.events if isinstance(e, cls)]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    (tmp_path / "datasets" / "birds").mkdir(parents=True)
    (tmp_path / "jobs").mkdir()
    return tmp_path / "datasets", tmp_path / "jobs"


def make_watcher(tree, rec: Recorder, settle: float = 1.0, **kw) -> Watcher:
    roots, jobs = tree
    return Watcher([roots], jobs, on_dataset=rec, on_job=rec, settle_seconds=settle, **kw)


def test_ticks_settle_coalesce_and_reconcile(tree) -> None:
    roots, jobs = tree
    rec = Recorder()
    w = make_watcher(tree, rec, settle=1.0)
    birds = roots / "birds"
    (birds / "a.wav").write_bytes(b"a")
    (birds / "a.npz").write_bytes(b"n")
    (birds / ".a.wav.part").write_bytes(b"junk")
    (jobs / "j.toml").write_text('dataset = "birds"\n')
    w.full_scan()
    assert w.tick(0.0) == []
    (birds / "b.wav").write_bytes(b"b")  # arrives later: holds the dataset's event back
    w.notice(str(birds / "b.wav"))
    assert w.tick(0.5) == []
    ev = w.tick(1.0)
    assert ev == [JobEvent(jobs / "j.toml", "created")]
    ev = w.tick(1.5)
    assert ev == [DatasetEvent(roots, "birds", "changed", ("a.npz", "a.wav", "b.wav"))]
    # Nothing changed: a rescan reports nothing.
    w.full_scan()
    assert w.tick(3.0) == [] and w.tick(5.0) == []
    # Edit, delete, remove a dataset, add a dataset, delete the job.
    (birds / "a.wav").write_bytes(b"aa")
    (birds / "a.npz").unlink()
    (roots / "frogs").mkdir()
    (roots / "frogs" / "f.wav").write_bytes(b"f")
    (jobs / "j.toml").unlink()
    w.full_scan()
    ev = w.tick(6.0)
    assert ev == [JobEvent(jobs / "j.toml", "deleted")]
    ev = w.tick(7.0)
    assert set(ev) == {DatasetEvent(roots, "birds", "changed", ("a.npz", "a.wav")),
                       DatasetEvent(roots, "frogs", "changed", ("f.wav",))}
    shutil.rmtree(roots / "frogs")
    w.full_scan()
    assert w.tick(8.0) == [DatasetEvent(roots, "frogs", "removed")]


def test_callback_errors_do_not_stop_the_watcher(tree) -> None:
    roots, jobs = tree

    def boom(ev: object) -> None:
        raise RuntimeError("callback bug")

    w = Watcher([roots], jobs, on_dataset=boom, on_job=boom, settle_seconds=0.0)
    (jobs / "j.toml").write_text("")
    w.full_scan()
    assert len(w.tick(0.0)) == 1


@pytest.mark.parametrize("polling", [False, True], ids=["inotify", "polling"])
def test_slow_chunked_copy_is_reported_only_once_settled(tree, polling: bool) -> None:
    roots, jobs = tree
    rec = Recorder()
    settle = 0.3
    w = make_watcher(tree, rec, settle=settle, use_polling=polling, poll_interval=0.05)
    w.start()
    try:
        time.sleep(0.1)
        target = roots / "birds" / "clip.wav"
        with open(target, "wb") as f:
            for _ in range(5):  # 0.5 s of writing, longer than the settle time
                f.write(os.urandom(4096))
                f.flush()
                last_write = time.monotonic()
                time.sleep(0.1)
        (roots / "newset").mkdir()  # a dataset created at run time
        (roots / "newset" / "x.npz").write_bytes(b"x")
        (jobs / "late.toml").write_text('dataset = "newset"\n')
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and (len(rec.of(DatasetEvent)) < 2
                                               or not rec.of(JobEvent)):
            time.sleep(0.05)
    finally:
        w.stop()
    with rec.lock:
        times = {e.name: t for t, e in rec.events if isinstance(e, DatasetEvent)}
    assert set(times) == {"birds", "newset"}
    assert times["birds"] >= last_write + settle * 0.9  # never before the copy settled
    assert [e.files for e in rec.of(DatasetEvent) if e.name == "birds"] == [("clip.wav",)]
    assert rec.of(JobEvent) == [JobEvent(jobs / "late.toml", "created")]
