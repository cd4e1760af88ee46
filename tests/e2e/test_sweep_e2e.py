"""End-to-end: a job with three [[sweep]] entries through the real daemon (tiny model, CPU):
three runs sharing one extraction, a sweep summary with a comparison figure and a
recommendation, and a re-queued sweep that skips the runs already done."""

from __future__ import annotations

import json

import pytest

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e


def test_sweep_of_three_runs_through_the_daemon(tree: DaemonTree) -> None:
    tree.add_clips("tones", 3)
    path = tree.write_job("tones", "tones", steps=10, save_every=5, log_every=5)
    path.write_text(path.read_text() + "\n".join([
        "[[sweep]]", 'id = "base"',
        "[[sweep]]", 'id = "rank8"', "lora.rank = 8",
        "[[sweep]]", 'id = "fastlr"', "train.lr = 1e-3", ""]))
    tree.start()
    runs = tree.wait_for(lambda: len(tree.runs("tones", "train")) == 3 and tree.runs("tones", "train"),
                         30, "three sweep runs")
    assert sorted(r.sweep_id for r in runs) == ["base", "fastlr", "rank8"]
    for r in runs:
        assert tree.wait_state(r.id, ("done", "failed"), 240).state == "done"
    extracts = tree.runs("extract-tones", "extract")
    assert len(extracts) == 1  # one extraction serves the whole sweep

    sweep = tree.root / "out" / "tones" / "sweep"
    tree.wait_for(lambda: tree.events("sweep.done"), 30, "the sweep.done event")
    summary = json.loads((sweep / "sweep_summary.json").read_text())
    assert (sweep / "loss_comparison.png").stat().st_size > 0
    by_id = {e["id"]: e for e in summary["experiments"]}
    assert set(by_id) == {"base", "rank8", "fastlr"}
    assert all(e["status"] == "done" for e in by_id.values())
    assert by_id["rank8"]["config"]["rank"] == 8 and by_id["fastlr"]["config"]["lr"] == 1e-3
    for e in by_id.values():
        res = e["results"]
        assert set(res["loss_at_steps"]) == {"5", "10"} and res["adapter_path"].endswith("adapter_final.pt")
        assert res["final_loss"] > 0 and e["duration_seconds"] > 0
    rec = summary["recommendation"]
    assert rec["reason"] and (rec["id"] or rec["rejected"])
    done = tree.events("sweep.done")[-1]
    assert done["summary"].endswith("sweep_summary.json") and "reason" in done

    # the same sweep requested again: every run is already done, nothing new is queued
    again = tree.cli("enqueue", "tones", "--wait", "10")
    assert "already done" in again.stdout, again.stdout + again.stderr  # exit 1: nothing queued
    assert len(tree.runs("tones", "train")) == 3
