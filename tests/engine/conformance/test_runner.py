"""The conformance runner on the shared goldens, and its tolerance parsing."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from selva_engine.conformance.runner import main, run_golden, tolerance_for


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


def test_vocoder_goldens_pass(golden_dir, capsys):
    assert main([str(golden_dir), "--only", "bigvgan_v1,bigvgan_v2"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("PASS bigvgan_tiny [bigvgan_v1]")
    assert out[1].startswith("PASS bigvgan_v2_tiny [bigvgan_v2]")
    assert out[-1] == "2 passed, 0 failed"


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


@pytest.mark.slow
def test_full_runner_on_shared_goldens(golden_dir):
    proc = subprocess.run([sys.executable, "-m", "selva_engine.conformance", str(golden_dir)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1].endswith("passed, 0 failed")


def test_runner_reads_every_setting_from_the_sidecar(golden_dir, tmp_path):
    """A golden with another config (dims, steps, cfg) passes only if the runner uses them.

    The expected arrays are made here by our own generator on a config unlike the shared
    golden's; then the sidecar is changed (steps) without the arrays and must fail.
    """
    import torch

    from selva_engine.conformance.engine import run_generator
    from selva_engine.model.generator import Generator

    side = json.loads((golden_dir / "generator_tiny.json").read_text())
    cfg = dict(side["constructor_config"], hidden_dim=96, num_heads=3, latent_dim=6, depth=4,
               fused_depth=2, latent_seq_len=12, clip_seq_len=4, sync_seq_len=8, text_seq_len=5)
    torch.manual_seed(3)
    model = Generator(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        model.latent_std.uniform_(0.5, 1.5)
    np.savez(tmp_path / "g.weights.npz", **{k: v.numpy() for k, v in model.state_dict().items()})
    g = torch.Generator().manual_seed(4)
    io = {"input.latent": torch.randn(2, 12, 6, generator=g), "input.clip_f": torch.randn(2, 4, 32, generator=g),
          "input.sync_f": torch.randn(2, 8, 24, generator=g), "input.text_f": torch.randn(2, 5, 32, generator=g),
          "input.t": torch.tensor([0.3, 0.6]), "input.x0": torch.randn(2, 12, 6, generator=g),
          "input.neg_text_f": torch.randn(2, 5, 32, generator=g), "input.raw_latent": torch.randn(2, 12, 6, generator=g)}
    io = {k: v.numpy() for k, v in io.items()}
    new_side = dict(side, golden="g", constructor_config=cfg, weights_file="g.weights.npz",
                    io_file="g.io.npz", num_steps=3, cfg_strength=2.0)
    names = ["output.flow", "output.sample.x1", "output.sample.trajectory", "output.sample_cfg0.5.x1",
             "output.sample_neg.x1", "output.normalize.out"]
    # the runner computes the sampling outputs the golden names, so name them first
    produced = run_generator(new_side, tmp_path, {**io, **{k: np.zeros(1) for k in names}})
    assert produced["output.sample.trajectory"].shape[0] == 4  # 3 steps + start
    np.savez(tmp_path / "g.io.npz", **io, **{k: produced[k] for k in names})
    (tmp_path / "g.json").write_text(json.dumps(new_side))
    assert run_golden(tmp_path / "g.json").ok
    (tmp_path / "g.json").write_text(json.dumps(dict(new_side, num_steps=4)))
    assert not run_golden(tmp_path / "g.json").ok
    (tmp_path / "g.json").write_text(json.dumps(dict(new_side, cfg_strength=3.0)))
    assert not run_golden(tmp_path / "g.json").ok
