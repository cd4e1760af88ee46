"""The runner's choices on several slots (selvad.service.runner), driven by hand: which
queued run takes the next free slot, and which wait."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from selvad.runs.queue import RunQueue
from selvad.runs.worker import RunProcess
from selvad.service.daemon import Daemon


@pytest.fixture
def two_slots(make_config: Callable[[str], Path]) -> Daemon:
    d = Daemon(make_config('[device]\nname = ["cpu", "cpu"]\n'))
    d.queue = RunQueue(d.cfg.paths.queue_path)
    return d


def _enqueue(d: Daemon, job: str, priority: int = 0, kind: str = "train",
             dataset: str = "birds"):
    assert d.queue is not None
    return d.queue.enqueue(job, dataset, {"variant": "tiny_16k", "job": job}, {"files": []},
                           priority=priority, kind=kind)


def test_free_slots_go_to_the_highest_priority_across_devices(two_slots: Daemon) -> None:
    d = two_slots
    assert d.queue is not None
    low, high, mid = _enqueue(d, "low", 0), _enqueue(d, "high", 5), _enqueue(d, "mid", 1)
    ex = d.runner.executor
    assert [s.label for s in ex.free_slots([])] == ["cpu#0", "cpu#1"]
    assert d._pick().id == high.id
    first = RunProcess(d.queue.claim(high.id, device="cpu#0"), d.queue, d.cfg, ex.slots[0])
    d.running[high.id] = first
    assert [s.label for s in ex.free_slots(d.running.values())] == ["cpu#1"]
    assert d._pick().id == mid.id  # the next slot: the next priority, not the oldest run
    d.running[mid.id] = RunProcess(d.queue.claim(mid.id, device="cpu#1"), d.queue, d.cfg,
                                   ex.slots[1])
    assert ex.free_slots(d.running.values()) == []
    assert d.queue.get(mid.id).device == "cpu#1" and d._pick().id == low.id


def test_training_waits_while_its_dataset_is_extracted_others_go(two_slots: Daemon) -> None:
    d = two_slots
    assert d.queue is not None
    extract = _enqueue(d, "extract-birds", kind="extract")
    birds, fish = _enqueue(d, "birds", 3), _enqueue(d, "fish", 0, dataset="fish")
    assert d._pick().id == extract.id  # extraction first
    slot = d.runner.executor.slots[0]
    d.running[extract.id] = RunProcess(d.queue.claim(extract.id, device=slot.label), d.queue,
                                       d.cfg, slot)
    assert d._pick().id == fish.id  # birds would encode the same clips a second time
    del d.running[extract.id]
    assert d._pick().id == birds.id


@pytest.mark.parametrize(("err", "expect"), [
    (13, "make {dir} writable by the user selvad runs as"),
    (30, "mounted read-only; remount it read-write"),
    (28, "no space left; free space"),
])
def test_a_run_dir_that_cannot_be_written_fails_with_one_sentence_and_the_fix(
        two_slots: Daemon, monkeypatch: pytest.MonkeyPatch, err: int, expect: str) -> None:
    import os

    d = two_slots
    assert d.queue is not None
    run = _enqueue(d, "birds")
    run_dir = d.cfg.paths.output_root / "birds" / run.id
    run_dir.mkdir(parents=True)
    target = run_dir / "run.toml"

    def refuse(self: RunProcess) -> None:  # what a read-only run directory does to start()
        raise OSError(err, os.strerror(err), str(target))

    monkeypatch.setattr(RunProcess, "start", refuse)
    assert d.runner.start(run, d.runner.executor.slots[0])
    failed = d.queue.get(run.id)
    assert failed.state == "failed" and "Errno" not in (failed.error or "")
    assert expect.format(dir=run_dir) in failed.error and str(target) in failed.error
    assert "\n" not in failed.error and "`selvad retry`" in failed.error
