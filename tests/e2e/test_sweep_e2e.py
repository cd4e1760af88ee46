"""End-to-end: a job with three [[sweep]] entries through the real daemon (tiny model, CPU):
runs sharing one extraction, `selvad cancel` skipping one run of the sweep, a sweep summary
with a comparison figure and a recommendation, and a re-queued sweep that re-runs only what
is not done."""

from __future__ import annotations

import json

import pytest

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e


def _summary(tree: DaemonTree) -> dict:
    return json.loads((tree.root / "out" / "tones" / "sweep" / "sweep_summary.json").read_text())


@pytest.mark.slow
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
    skipped = next(r for r in runs if r.sweep_id == "fastlr")
    cancel = tree.cli("cancel", skipped.id, "--wait", "20")
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    for r in runs:
        want = ("cancelled",) if r.id == skipped.id else ("done", "failed")
        assert tree.wait_state(r.id, want, 240).state in ("done", "cancelled")
    assert len(tree.runs("extract-tones", "extract")) == 1  # one extraction serves the sweep

    sweep = tree.root / "out" / "tones" / "sweep"
    tree.wait_for(lambda: tree.events("sweep.done"), 30, "the sweep.done event")
    by_id = {e["id"]: e for e in _summary(tree)["experiments"]}
    assert {k: e["status"] for k, e in by_id.items()} == {"base": "done", "rank8": "done",
                                                          "fastlr": "cancelled"}
    assert (sweep / "loss_comparison.png").stat().st_size > 0
    assert by_id["rank8"]["config"]["rank"] == 8 and by_id["base"]["config"]["rank"] == 4
    for sid in ("base", "rank8"):
        res = by_id[sid]["results"]
        assert set(res["loss_at_steps"]) == {"5", "10"} and res["adapter_path"].endswith("adapter_final.pt")
        assert res["final_loss"] > 0 and by_id[sid]["duration_seconds"] > 0
    done = tree.events("sweep.done")[-1]
    assert done["summary"].endswith("sweep_summary.json") and done["reason"]

    # re-queued: the done runs are skipped, only the cancelled entry runs again
    again = tree.cli("enqueue", "tones", "--wait", "20")
    assert again.returncode == 0 and again.stdout.count("queued ") == 1, again.stdout + again.stderr
    fresh = [r for r in tree.runs("tones", "train") if r.id not in {x.id for x in runs}]
    assert [r.sweep_id for r in fresh] == ["fastlr"]
    assert tree.wait_state(fresh[0].id, ("done", "failed"), 240).state == "done"
    tree.wait_for(lambda: all(e["status"] == "done" for e in _summary(tree)["experiments"]),
                  30, "the summary to show the re-run")
    summary = _summary(tree)
    by_id = {e["id"]: e for e in summary["experiments"]}
    assert by_id["fastlr"]["run_id"] == fresh[0].id and by_id["fastlr"]["config"]["lr"] == 1e-3
    rec = summary["recommendation"]
    assert rec["reason"] and (rec["id"] or len(rec["rejected"]) == 6)  # 3 runs x 2 checkpoints
    assert "torch_version" in summary["system"]
