"""Run queue: state machine, dedup, ordering, claims across threads, requests, manifests."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from selvad.runs.queue import (
    IllegalTransition,
    RunQueue,
    dataset_manifest,
    manifest_hash,
    transition,
)

MANIFEST = {"files": [{"name": "a.npz", "size": 3, "mtime_ns": 1, "sha256": "00"}]}


@pytest.fixture
def q(tmp_path: Path) -> RunQueue:
    queue = RunQueue(tmp_path / "state" / "queue.sqlite3")
    yield queue
    queue.close()


def add(q: RunQueue, job: str = "j", priority: int = 0, kind: str = "train", **kw):
    return q.enqueue(job, "birds", kw.pop("config", {"lr": 1e-4}), kw.pop("manifest", MANIFEST),
                     priority=priority, kind=kind, **kw)


@pytest.mark.parametrize("old,new", [
    ("queued", "extracting"), ("extracting", "training"), ("training", "done"),
    ("training", "failed"), ("training", "cancelled"), ("queued", "cancelled"),
    ("extracting", "done"), ("extracting", "queued"), ("training", "queued"),
    ("failed", "queued"), ("cancelled", "queued"),
])
def test_legal_transitions(old: str, new: str) -> None:
    assert transition(old, new) == new


@pytest.mark.parametrize("old,new", [
    ("queued", "training"), ("queued", "done"), ("done", "queued"), ("done", "failed"),
    ("failed", "training"), ("training", "extracting"), ("queued", "bogus"),
])
def test_illegal_transitions(old: str, new: str) -> None:
    with pytest.raises(IllegalTransition, match=f"{old} -> {new}"):
        transition(old, new)


def test_database_is_wal(q: RunQueue) -> None:
    add(q)
    conn = sqlite3.connect(q.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_enqueue_and_get(q: RunQueue) -> None:
    run = add(q, sweep_id="r8")
    assert run is not None and run.state == "queued" and run.attempts == 0
    assert run.config == {"lr": 1e-4} and run.manifest == MANIFEST
    assert run.manifest_hash == manifest_hash(MANIFEST) and len(run.config_hash) == 64
    assert q.get(run.id) == run and q.get("nope") is None
    assert len(run.id.split("-")) == 3
    assert run.to_dict()["sweep_id"] == "r8" and "manifest" not in run.to_dict()


def test_same_job_on_same_data_is_never_queued_twice(q: RunQueue) -> None:
    first = add(q)
    assert add(q) is None
    for state in ("extracting", "training", "done"):
        q.set_state(first.id, state)
        assert add(q) is None, state
    assert add(q, config={"lr": 2e-4}) is not None  # edited job
    other = {"files": [{"name": "b.npz", "size": 3, "mtime_ns": 1, "sha256": "11"}]}
    assert add(q, manifest=other) is not None  # new data
    assert add(q, sweep_id="x") is not None and add(q, kind="extract") is not None
    assert add(q, force=True) is not None


def test_failed_or_cancelled_runs_can_be_queued_again(q: RunQueue) -> None:
    run = add(q)
    q.set_state(run.id, "cancelled")
    again = add(q)
    assert again is not None and again.id != run.id


def test_automatic_triggers_never_revive_a_cancelled_or_failed_run(q: RunQueue) -> None:
    for state in ("cancelled", "failed"):  # the user's cancel leaves no note (error NULL)
        run = add(q, job=state)
        q.claim(run.id)
        q.set_state(run.id, state)
        assert add(q, job=state, rerun_states=()) is None, state
    first = add(q, job="sup")  # a superseded run is never a duplicate
    q.supersede("sup", set(), by="newer")
    assert add(q, job="sup", rerun_states=()) is not None and first is not None


def test_next_run_order(q: RunQueue) -> None:
    low = add(q, job="low", priority=0)
    high = add(q, job="high", priority=5)
    high2 = add(q, job="high2", priority=5)
    ext = add(q, job="ext", kind="extract", priority=-1)
    order = []
    while (run := q.next_run()) is not None:
        order.append(run.job)
        assert q.claim(run.id) is not None
    assert order == [ext.job, high.job, high2.job, low.job]


def test_claim_state_changes_and_progress(q: RunQueue) -> None:
    run = add(q)
    claimed = q.claim(run.id, pid=1234)
    assert claimed.state == "extracting" and claimed.pid == 1234 and claimed.attempts == 1
    assert claimed.started_at is not None
    assert q.claim(run.id) is None  # already claimed
    q.set_state(run.id, "training", output_dir="/out/j/x")
    q.update_progress(run.id, step=10, total_steps=100, loss=0.5, samples_per_s=3.0, eta_s=30.0)
    q.update_progress(run.id, step=20)
    cur = q.get(run.id)
    assert (cur.step, cur.total_steps, cur.loss, cur.eta_s) == (20, 100, 0.5, 30.0)
    assert cur.output_dir == "/out/j/x"
    assert [r.id for r in q.interrupted_runs()] == [run.id]
    q.set_state(run.id, "queued")  # daemon shutdown: back in the queue, resumes later
    assert q.get(run.id).pid is None and q.interrupted_runs() == []
    q.claim(run.id)
    q.set_state(run.id, "training")
    failed = q.set_state(run.id, "failed", error="CUDA out of memory")
    assert failed.error == "CUDA out of memory" and failed.finished_at is not None
    with pytest.raises(IllegalTransition):
        q.set_state(run.id, "training")
    retried = q.set_state(run.id, "queued")
    assert retried.error is None and retried.finished_at is None
    assert q.claim(run.id).attempts == 3
    with pytest.raises(KeyError):
        q.set_state("missing", "queued")


def test_list_runs_filters(q: RunQueue) -> None:
    a, b, c = add(q, job="a"), add(q, job="b"), add(q, job="a", sweep_id="s")
    q.set_state(c.id, "cancelled")
    assert [r.id for r in q.list_runs()] == [a.id, b.id, c.id]
    assert [r.id for r in q.list_runs(job="a")] == [a.id, c.id]
    assert [r.id for r in q.list_runs(states=["queued"])] == [a.id, b.id]
    assert [r.id for r in q.list_runs(limit=2)] == [b.id, c.id]


def test_only_one_thread_claims_a_run(q: RunQueue) -> None:
    run = add(q)
    wins: list[object] = []

    def worker() -> None:
        local = RunQueue(q.path)
        wins.append(local.claim(run.id))
        local.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(w is not None for w in wins) == 1


def test_requests(q: RunQueue) -> None:
    run = add(q)
    r1 = q.request("cancel", run_id=run.id)
    r2 = q.request("enqueue", job="birdjob")
    assert [(r.id, r.action) for r in q.pending_requests()] == [(r1, "cancel"), (r2, "enqueue")]
    q.mark_handled(r1, "cancelled")
    assert [r.id for r in q.pending_requests()] == [r2]
    assert q.get_request(r1).result == "cancelled" and q.get_request(r1).handled_at
    for bad in (dict(action="nuke", run_id="x"), dict(action="cancel"), dict(action="enqueue"),
                dict(action="render", run_id=run.id)):
        with pytest.raises(ValueError):
            q.request(**bad)
    r3 = q.request("render", job="birdjob")  # `selvad enqueue JOB --render`: a job, no run
    assert [(r.id, r.action, r.job) for r in q.pending_requests()] == [(r2, "enqueue", "birdjob"),
                                                                         (r3, "render", "birdjob")]


def test_dataset_manifest_and_hash_cache(tmp_path: Path) -> None:
    ds = tmp_path / "birds"
    ds.mkdir()
    (ds / "a.npz").write_bytes(b"npz")
    (ds / "a.wav").write_bytes(b"wav")
    (ds / "prompts.txt").write_text("a: birds\n")
    for junk in (".hidden.wav", "notes.md", "b.wav.part", "~lock.wav"):
        (ds / junk).write_bytes(b"x")
    (ds / "sub.wav").mkdir()
    cache: dict = {}
    m = dataset_manifest(ds, cache)
    assert [f["name"] for f in m["files"]] == ["a.npz", "a.wav", "prompts.txt", "sub.wav"]
    # a directory named like a clip is listed with its problem (validation reports it, and
    # removing it changes the manifest), never read or hashed
    assert m["files"][-1]["sha256"] == "" and "directory" in m["files"][-1]["problem"]
    assert len(cache) == 3
    h = manifest_hash(m)
    # Cached hashes are reused: poison the cache and see it come back.
    key = next(k for k in cache if k[0].endswith("a.npz"))
    cache[key] = "cached"
    assert dataset_manifest(ds, cache)["files"][0]["sha256"] == "cached"
    # Touching a file (same content) keeps the manifest hash; editing it changes it.
    st = (ds / "a.wav").stat()
    os.utime(ds / "a.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert manifest_hash(dataset_manifest(ds)) == h
    (ds / "a.wav").write_bytes(b"WAV")
    assert manifest_hash(dataset_manifest(ds)) != h
