"""End-to-end: the real daemon with its output_root on a small tmpfs that fills up.

The run fails with one sentence (no traceback) and stays resumable; once space is freed,
`selvad retry RUN` resumes it from its newest checkpoint and it finishes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from selva_engine.outputs.checkpoint import find_latest
from selvad.demo import missing_outputs
from tests.tmpfs import fill, small_tmpfs

from .conftest import DaemonTree

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _progress_steps(run_dir: Path) -> list[int]:
    records = [json.loads(x) for x in (run_dir / "progress.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if r["event"] == "progress"]


def test_full_disk_fails_the_run_then_retry_resumes_it(tmp_path: Path, tiny_weights: Path) -> None:
    with small_tmpfs(tmp_path / "out", 16 << 20) as out:  # the tree's output_root
        tree = DaemonTree(tmp_path, tiny_weights)
        try:
            tree.add_clips("birds", 3)
            tree.write_job("birds", "birds", steps=40, save_every=10)
            tree.start()
            run = tree.wait_for(lambda: tree.runs(job="birds", kind="train"), 30, "a training run")[0]
            run_dir = out / "birds" / run.id
            tree.wait_for(lambda: [e for e in tree.events("run.checkpoint") if e["run_id"] == run.id],
                          180, "the first checkpoint")
            ballast = fill(out)  # the disk is full from here on

            failed = tree.wait_state(run.id, ("failed", "done"), 180)
            assert failed.state == "failed"
            sentence = f"disk full in {re.escape(str(run_dir))}( \\(.*\\))?: free space or lower retention"
            assert re.match(rf"^{sentence}; the full log is ", failed.error), failed.error
            assert "Traceback" not in failed.error and 'File "' not in failed.error
            resume_point = find_latest(run_dir)
            assert resume_point is not None and resume_point[1]["step"] >= 10
            assert not [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")]
            assert not (run_dir / "adapter_final.pt").exists()

            ballast.unlink()
            retry = tree.cli("retry", run.id)
            assert retry.returncode == 0, retry.stdout + retry.stderr
            done = tree.wait_state(run.id, ("done", "failed"), 240)
            assert done.state == "done", done.error
            resumed = [e for e in tree.events("run.resumed") if e["run_id"] == run.id]
            assert [e["step"] for e in resumed] == [resume_point[1]["step"]]
            assert _progress_steps(run_dir) == list(range(5, 41, 5))  # one line per step
            assert missing_outputs(run_dir) == []
        finally:
            tree.cleanup()
