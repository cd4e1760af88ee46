"""Retention inside a run directory: which step checkpoints go, and pruning them."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from selva_engine.outputs.checkpoint import checkpoint_name, find_latest, save_checkpoint
from selvad.runs.retention import checkpoints_to_prune, prune_run_dir, spread_checkpoints


def test_checkpoints_to_prune_keeps_newest_final_and_best() -> None:
    names = ["adapter_step01000.pt", "adapter_step00500.pt", "adapter_step01500.pt",
             "adapter_final.pt", "adapter_best.pt", "sample_step00500.wav", "meta.json"]
    assert checkpoints_to_prune(names, 2) == ["adapter_step00500.pt"]
    assert checkpoints_to_prune(names, 0) == [
        "adapter_step00500.pt", "adapter_step01000.pt", "adapter_step01500.pt"]
    assert checkpoints_to_prune(names, 0, finished=False) == [
        "adapter_step00500.pt", "adapter_step01000.pt"]  # the resume point stays
    assert checkpoints_to_prune(names, 10) == []


def test_prune_run_dir(tmp_path) -> None:
    for n in ("adapter_step00001.pt", "adapter_step00002.pt", "adapter_final.pt"):
        (tmp_path / n).write_bytes(b"x")
    assert prune_run_dir(tmp_path, 1) == []  # by default the first checkpoint stays
    assert [p.name for p in prune_run_dir(tmp_path, 1, keep_spread=False)] == [
        "adapter_step00001.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_final.pt",
                                                          "adapter_step00002.pt"]
    assert prune_run_dir(tmp_path / "missing", 1) == []


def test_default_retention_keeps_an_evenly_spread_set_to_audition(tmp_path) -> None:
    """A 3000-step run saved every 250 steps keeps the first checkpoint, the guide's 500,
    1000 and 2000 marks and the newest 3, each with its sample; the rest go."""
    steps = range(250, 3001, 250)
    for step in steps:
        (tmp_path / f"adapter_step{step:05d}.pt").write_bytes(b"x")
        (tmp_path / f"sample_step{step:05d}.wav").write_bytes(b"x")
    (tmp_path / "adapter_final.pt").write_bytes(b"x")
    prune_run_dir(tmp_path, 3)
    kept = sorted(int(p.name[12:17]) for p in tmp_path.glob("adapter_step*.pt"))
    assert kept == [250, 500, 1000, 2000, 2500, 2750, 3000]
    samples = sorted(int(p.name[11:16]) for p in tmp_path.glob("sample_step*.wav"))
    assert samples == kept
    assert spread_checkpoints(["adapter_step00300.pt", "adapter_step00600.pt",
                               "adapter_step00900.pt"]) == {
        "adapter_step00300.pt", "adapter_step00600.pt"}  # nearest 500; 1000 is past the end



def _checkpoint(path: Path, step: int) -> None:
    save_checkpoint(path / checkpoint_name(step), {"state_dict": {}, "optimizer": {},
                                                   "scheduler": {}, "step": step})


def test_prune_never_removes_the_newest_checkpoint_that_loads(tmp_path) -> None:
    """The newest step files are unreadable (a disk failure, a copy cut short): the newest
    one that loads is the only resume point and stays, whatever keep_last says."""
    for step in (10, 20, 30):
        _checkpoint(tmp_path, step)
    (tmp_path / checkpoint_name(40)).write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / checkpoint_name(50)).write_bytes(b"")
    removed = prune_run_dir(tmp_path, 1, finished=False, keep_spread=False)
    assert sorted(p.name for p in removed) == [checkpoint_name(10), checkpoint_name(20),
                                               checkpoint_name(40)]
    assert find_latest(tmp_path)[1]["step"] == 30
    removed = prune_run_dir(tmp_path, 1, finished=True, keep_spread=False)  # a finished run keeps it too
    assert removed == [] and find_latest(tmp_path)[1]["step"] == 30
    assert checkpoints_to_prune([checkpoint_name(s) for s in (1, 2, 3)], 1, finished=False,
                                newest_loadable=checkpoint_name(1)) == [checkpoint_name(2)]


def test_prune_removes_stale_temp_files_of_killed_writes(tmp_path) -> None:
    fd, stale = tempfile.mkstemp(prefix=".adapter_step00120.pt.", suffix=".tmp", dir=tmp_path)
    os.close(fd)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fd, fresh = tempfile.mkstemp(prefix=".sample_step00120.wav.", suffix=".tmp", dir=tmp_path)
    os.close(fd)  # just written: a live writer may still own it
    (tmp_path / "notes.tmp").write_bytes(b"x")
    os.utime(tmp_path / "notes.tmp", (0, 0))
    removed = prune_run_dir(tmp_path, 1, keep_spread=False)
    assert [p.name for p in removed] == [Path(stale).name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([Path(fresh).name, "notes.tmp"])


def test_a_pruned_checkpoint_takes_its_sample_and_best_and_recommended_stay(tmp_path) -> None:
    """The guide says: audition the samples, load the checkpoint that sounds best. No sample
    is left without its checkpoint; the best and recommended step checkpoints stay."""
    import json

    for step in (10, 20, 30, 40, 50):
        (tmp_path / checkpoint_name(step)).write_bytes(b"x")
        (tmp_path / f"sample_step{step:05d}.wav").write_bytes(b"RIFF")
        (tmp_path / f"sample_step{step:05d}.png").write_bytes(b"PNG")  # its spectrogram
    for name in ("adapter_final.pt", "adapter_best.pt", "loss.png"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "meta.json").write_text(json.dumps({
        "best": {"step": 10, "val_loss": 0.1, "file": "adapter_best.pt"},
        "recommendation": {"id": "step00020", "path": str(tmp_path / checkpoint_name(20))}}))
    removed = sorted(p.name for p in prune_run_dir(tmp_path, 1, keep_spread=False))
    assert removed == [checkpoint_name(30), checkpoint_name(40), "sample_step00030.png",
                       "sample_step00030.wav", "sample_step00040.png", "sample_step00040.wav"]
    left = sorted(p.name for p in tmp_path.iterdir())
    for step in (10, 20, 50):  # best, recommended, newest: each with its sample
        assert checkpoint_name(step) in left and f"sample_step{step:05d}.wav" in left
    assert {"adapter_final.pt", "adapter_best.pt", "loss.png", "meta.json"} <= set(left)
    samples = {n[len("sample_"):-4] for n in left if n.startswith("sample_")}
    assert samples == {n[len("adapter_"):-3] for n in left if n.startswith("adapter_step")}


def test_a_pruned_checkpoint_takes_its_audition_files(tmp_path) -> None:
    """audition/<video>_stepNNNNN.wav/.png/.mp4 go with their checkpoint, the others stay."""
    (tmp_path / "audition").mkdir()
    for step in (1, 2):
        (tmp_path / f"adapter_step{step:05d}.pt").write_bytes(b"x")
        for video in ("street", "kitchen_step2"):
            for suffix in (".wav", ".png", ".mp4"):
                (tmp_path / "audition" / f"{video}_step{step:05d}{suffix}").write_bytes(b"x")
    (tmp_path / "audition" / "notes_step00001.txt").write_bytes(b"x")
    removed = prune_run_dir(tmp_path, 1, keep_spread=False)
    assert sorted(p.name for p in removed) == sorted(
        ["adapter_step00001.pt"] + [f"{v}_step00001{s}" for v in ("street", "kitchen_step2")
                                    for s in (".wav", ".png", ".mp4")])
    assert sorted(p.name for p in (tmp_path / "audition").iterdir()) == sorted(
        ["notes_step00001.txt"] + [f"{v}_step00002{s}" for v in ("street", "kitchen_step2")
                                   for s in (".wav", ".png", ".mp4")])
