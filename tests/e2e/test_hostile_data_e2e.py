"""End-to-end: hostile dataset files dropped into a running daemon's dataset root.

The real daemon (tiny model, CPU) validates what arrives: a compressed `.npz` bomb is
read only as far as training needs, one declaring over 2 GiB refused from its header (the daemon's memory high-water mark stays where it was) and a
link out of the dataset root is flagged and never trained on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from selvad.demo import make_dataset
from tests.hostile_data import write_npz_bomb

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e

MiB = 1 << 20


def _vm_hwm(pid: int) -> int:
    """Peak resident memory of process `pid` so far, in bytes (VmHWM of /proc/pid/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _verdict(tree: DaemonTree, dataset: str) -> dict[str, Any] | None:
    """The first dataset.valid / dataset.invalid event of `dataset`, or None yet."""
    for ev in tree.events():
        if ev.get("event") in ("dataset.valid", "dataset.invalid") and ev.get("dataset") == dataset:
            return ev
    return None


@pytest.mark.slow
def test_compressed_bomb_is_flagged_and_memory_stays_bounded(tree: DaemonTree) -> None:
    """A 1 MB np.savez_compressed-style file declaring (1, 262144, 1024) float32 (1 GiB
    once loaded) took the daemon from ~54 MB to 2.36 GB during validation. Long feature
    files are valid now (ComfyUI's whole-video files): only the rows trained on are read, so
    this one is a warning and memory stays flat; one declaring over 2 GiB is refused unread."""
    proc = tree.start()
    tree.wait_for(lambda: tree.events("daemon.ready"), 60, "daemon.ready")
    before = _vm_hwm(proc.pid)
    own = tree.dataset("own")
    make_dataset(own, 2, "tiny_16k")
    bomb = write_npz_bomb(own / "bomb.npz", (1, 262144, 1024))
    huge = write_npz_bomb(own / "huge.npz", (1, 700000, 1024))  # 2.7 GiB declared
    assert bomb.stat().st_size < 2 * MiB and huge.stat().st_size < 4 * MiB
    for stem in ("bomb", "huge"):
        (own / f"{stem}.wav").write_bytes((own / "clip00.wav").read_bytes())
    tree.write_job("own", "own")

    verdict = tree.wait_for(lambda: _verdict(tree, "own"), 90, "the dataset's validation")
    grown = _vm_hwm(proc.pid) - before
    assert verdict["event"] == "dataset.invalid", verdict
    errors = " ".join(verdict["errors"])
    assert "huge.npz" in errors and "(1, 700000, 1024)" in errors and "not loaded" in errors
    assert "bomb.npz" not in errors
    assert verdict["clips"] == 3 and verdict["error_count"] == 1
    assert grown < 200 * MiB, f"the daemon's peak memory grew by {grown / MiB:.0f} MiB"
    time.sleep(1.0)
    assert tree.runs() == [], "an invalid dataset queues nothing"
    assert proc.poll() is None, "the daemon keeps running"


def test_link_out_of_the_dataset_is_flagged_and_not_trained(tree: DaemonTree) -> None:
    """`ln -s /elsewhere/secret.npz datasets/own/x.npz` (and its audio) used to be listed,
    hashed and trained on."""
    tree.add_clips("own", 3)
    elsewhere = tree.root / "elsewhere"
    make_dataset(elsewhere, 1, "tiny_16k", seed=7, prefix="secret")
    (tree.dataset("own") / "x.npz").symlink_to(elsewhere / "secret00.npz")
    (tree.dataset("own") / "x.wav").symlink_to(elsewhere / "secret00.wav")
    tree.write_job("own", "own")
    proc = tree.start()

    verdict = tree.wait_for(lambda: _verdict(tree, "own"), 90, "the dataset's validation")
    assert verdict["event"] == "dataset.invalid", verdict
    errors = verdict["errors"]
    for name in ("x.npz", "x.wav"):
        line = next((e for e in errors if e.startswith(f"{name}: ")), "")
        assert str(elsewhere / name.replace("x.", "secret00.")) in line, errors
        assert "outside the dataset directory" in line and "(fix: " in line
    assert verdict["clips"] == 3
    time.sleep(1.0)
    assert tree.runs() == [], "nothing of this dataset is queued, let alone trained"
    assert proc.poll() is None
