"""Retention inside a run directory: which step checkpoints go, and pruning them."""

from __future__ import annotations

from selvad.runs.retention import checkpoints_to_prune, prune_run_dir


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
    assert [p.name for p in prune_run_dir(tmp_path, 1)] == ["adapter_step00001.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter_final.pt",
                                                          "adapter_step00002.pt"]
    assert prune_run_dir(tmp_path / "missing", 1) == []

