"""The conformance runner on the shared goldens, and its tolerance parsing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np

from selva_engine.conformance import main, run_golden, tolerance_for


def test_tolerance_rules():
    spec = {
        "output.flow": {"atol": 3e-4, "rtol": 1e-4},
        "debug.* except debug.t_freq": {"atol": 2e-4, "rtol": 1e-4},
        "debug.t_freq": {"atol": 2e-3, "rtol": 0},
        "output.sample*.x1 / output.sample.trajectory": {"atol": 5e-4, "rtol": 5e-4},
    }
    assert tolerance_for("output.flow", spec) == (3e-4, 1e-4)
    assert tolerance_for("debug.cond.clip_f", spec) == (2e-4, 1e-4)
    assert tolerance_for("debug.t_freq", spec) == (2e-3, 0.0)
    assert tolerance_for("output.sample_cfg0.5.x1", spec) == (5e-4, 5e-4)
    assert tolerance_for("output.other", spec) is None
    assert tolerance_for("output.x", {"all": {"atol": 1, "rtol": 0}}) == (1.0, 0.0)


def test_engine_goldens_pass(golden_dir, capsys):
    assert main([str(golden_dir), "--only", "generator,lora,flow_matching"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "4 passed, 0 failed"


def test_runner_detects_a_wrong_output(golden_dir, tmp_path):
    for f in golden_dir.glob("flow_matching.*"):
        shutil.copy(f, tmp_path / f.name)
    with np.load(tmp_path / "flow_matching.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["output.loss_v"] = arrays["output.loss_v"] + 1e-3
    np.savez(tmp_path / "flow_matching.npz", **arrays)
    result = run_golden(tmp_path / "flow_matching.json")
    assert not result.ok and "output.loss_v" in result.line()


def test_unknown_kind_fails(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"golden": "x", "kind": "teleporter"}))
    proc = subprocess.run([sys.executable, "-m", "selva_engine.conformance", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "unknown golden kind 'teleporter'" in proc.stdout
    assert proc.stdout.strip().endswith("0 passed, 1 failed")


def test_full_runner_on_shared_goldens(golden_dir):
    proc = subprocess.run([sys.executable, "-m", "selva_engine.conformance", str(golden_dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith("passed, 0 failed")
