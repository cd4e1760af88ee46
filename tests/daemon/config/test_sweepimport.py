"""`selvad import-sweep`: ComfyUI-SelVA scheduler files become job files the loader accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selvad.cli import main
from selvad.config.daemon import DaemonConfig
from selvad.config.jobs import load_job
from selvad.config.sweepimport import SweepImportError, import_experiments

# the shape of ComfyUI-SelVA's experiments/pissa_sweep.json (abridged)
PISSA = {
    "name": "pissa_sweep", "description": "PiSSA vs standard init ablation at rank 128.",
    "data_dir": "/media/x/features", "output_root": "/media/x/experiment/pissa_sweep",
    "base": {"steps": 10000, "rank": 128, "alpha": 0.0, "lr": 3e-4, "batch_size": 16,
             "warmup_steps": 200, "grad_accum": 1, "save_every": 2000, "seed": 42,
             "target": "attn.qkv", "timestep_mode": "uniform", "lora_dropout": 0.0,
             "lora_plus_ratio": 1.0, "lr_schedule": "constant", "init_mode": "pissa",
             "use_rslora": True},
    "experiments": [
        {"id": "standard_baseline", "description": "Kaiming init", "init_mode": "standard",
         "use_rslora": False},
        {"id": "pissa_rslora", "description": "the base as it is"},
        {"id": "pissa_rslora_lr1e-4", "lr": 1e-4, "group": "lr"},
        {"id": "logit", "timestep_mode": "logit_normal", "logit_normal_sigma": 0.8},
    ],
}


def test_a_scheduler_file_imports_into_a_job_with_one_sweep_entry_per_experiment(
        daemon_cfg: DaemonConfig, tmp_path: Path) -> None:
    src = tmp_path / "pissa_sweep.json"
    src.write_text(json.dumps(PISSA))
    job_path = daemon_cfg.paths.jobs_dir / "pissa.toml"
    job_path.write_text(import_experiments(src, "birds"))
    job = load_job(job_path, daemon_cfg)
    runs = {r.sweep_id: r.config for r in job.resolve_runs()}
    assert list(runs) == ["standard_baseline", "pissa_rslora", "pissa_rslora_lr1e-4", "logit"]
    base = runs["pissa_rslora"]
    assert (base.rank, base.alpha, base.lr, base.batch_size, base.steps) == (128, None, 3e-4,
                                                                             16, 10000)
    assert base.init_mode == "pissa" and base.rslora and base.target == ("attn.qkv",)
    assert runs["standard_baseline"].init_mode == "standard"
    assert not runs["standard_baseline"].rslora
    assert runs["pissa_rslora_lr1e-4"].lr == 1e-4
    assert runs["logit"].timestep_sampling == "logit_normal"
    assert runs["logit"].logit_normal_sigma == 0.8


def test_the_schedulers_defaults_are_written_out(tmp_path: Path) -> None:
    """Its defaults are not selvad's: an experiment without base keys still gets PiSSA and
    rsLoRA, as it would in ComfyUI."""
    src = tmp_path / "e.json"
    src.write_text(json.dumps({"base": {"rank": 16}, "experiments": [{"id": "a"}]}))
    text = import_experiments(src, "birds")
    assert 'init_mode = "pissa"' in text and "rslora = true" in text


@pytest.mark.parametrize("spec, says", [
    ({"base": {"n_tokens": 4}, "experiments": [{"id": "a"}]}, "base.n_tokens: no equivalent"),
    ({"experiments": [{"id": "a", "resume_path": "x.pt"}]}, "(a).resume_path: no equivalent"),
    ({"experiments": [{"id": "a", "timestep_mode": "beta"}]}, "'beta' has no equivalent"),
    ({"experiments": [{"id": "../a"}]}, "not a safe name"),
    ({"experiments": [{"id": "a"}, {"id": "a"}]}, "duplicate"),
    ({"adapters": [], "steps": 25}, "eval_batch.json runs with `selva-eval --from`"),
])
def test_what_has_no_equivalent_is_an_error_naming_it(tmp_path: Path, spec, says) -> None:
    src = tmp_path / "e.json"
    src.write_text(json.dumps(spec))
    with pytest.raises(SweepImportError) as info:
        import_experiments(src, "birds")
    assert any(says in p and p.startswith(str(src)) for p in info.value.problems), info.value


def test_the_command_writes_the_job_file_once(tmp_path: Path, capsys) -> None:
    src = tmp_path / "e.json"
    src.write_text(json.dumps(PISSA))
    out = tmp_path / "pissa.toml"
    assert main(["import-sweep", str(src), "--dataset", "birds", "--output", str(out)]) == 0
    assert "4 sweep entries" in capsys.readouterr().out and out.is_file()
    assert main(["import-sweep", str(src), "--dataset", "birds", "--output", str(out)]) == 1
    assert "exists" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{")
    assert main(["import-sweep", str(tmp_path / "bad.json"), "--dataset", "birds"]) == 2
    assert "cannot be read as JSON" in capsys.readouterr().err
