"""Device slots: `[device] name` checked against the machine (selvad.runs.slots)."""

from __future__ import annotations

import os

import pytest

from selvad.runs.slots import DeviceError, Slot, resolve_slots


def _gpus(n: int):
    return lambda: n


def test_a_single_name_is_one_slot_as_before() -> None:
    assert resolve_slots(("cpu",)) == [Slot("cpu", "cpu")]
    assert resolve_slots(("auto",)) == [Slot("auto", "auto")]


def test_cpu_slots_are_numbered_and_gpus_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    share = str(max(1, len(os.sched_getaffinity(0)) // 2))  # each of 2 runs: half the cores
    threads = {"OMP_NUM_THREADS": share, "MKL_NUM_THREADS": share}
    slots = resolve_slots(("cpu", "cpu"))
    assert [(s.label, dict(s.env)) for s in slots] == [("cpu#0", threads), ("cpu#1", threads)]
    slots = resolve_slots(("cuda:0", "cuda:1"), _gpus(2), visible="")
    assert [(s.label, s.device, dict(s.env)) for s in slots] == [
        ("cuda:0", "cuda", {"CUDA_VISIBLE_DEVICES": "0", **threads}),
        ("cuda:1", "cuda", {"CUDA_VISIBLE_DEVICES": "1", **threads})]


def test_a_thread_count_the_daemon_was_given_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert [dict(s.env) for s in resolve_slots(("cpu", "cpu"))] == [{}, {}]


def test_all_takes_every_gpu_through_the_daemons_own_visible_devices() -> None:
    slots = resolve_slots(("all",), _gpus(2), visible="2,3")
    assert [dict(s.env)["CUDA_VISIBLE_DEVICES"] for s in slots] == ["2", "3"]
    assert [s.label for s in slots] == ["cuda:0", "cuda:1"]


def test_a_gpu_the_machine_does_not_have_says_which_it_has() -> None:
    with pytest.raises(DeviceError, match=r"'cuda:7' but this machine has 2 CUDA GPU\(s\); "
                                          r"list only \"cuda:0\", \"cuda:1\""):
        resolve_slots(("cuda:0", "cuda:7"), _gpus(2))
    with pytest.raises(DeviceError, match='"all" but this machine has no CUDA GPU'):
        resolve_slots(("all",), _gpus(0))


def test_bad_lists_are_refused() -> None:
    for names in (("cuda:0", "cuda:0"), ("auto", "cpu"), ()):
        with pytest.raises(DeviceError):
            resolve_slots(names, _gpus(4))
