"""Job files: schema, precedence, dataset containment, sweeps, hashes, init-job."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from selva_engine.training.options import TrainConfig
from selvad.config.daemon import DaemonConfig, load_config
from selvad.config.jobs import HASH_EXCLUDED, JobError, config_hash, load_job
from selvad.config.settings import FIELD_KEY
from selvad.config.templates import init_job_text, write_job_file

REPO = Path(__file__).resolve().parents[3]


def job_file(cfg: DaemonConfig, text: str, name: str = "birdjob") -> Path:
    path = cfg.paths.jobs_dir / f"{name}.toml"
    path.write_text(text)
    return path


def job_problems(cfg: DaemonConfig, text: str, name: str = "birdjob") -> list[str]:
    with pytest.raises(JobError) as info:
        load_job(job_file(cfg, text, name), cfg)
    return info.value.problems


def test_every_train_option_has_a_job_key() -> None:
    daemon_filled = set(HASH_EXCLUDED) | {"extra"}
    assert {f.name for f in fields(TrainConfig)} - daemon_filled == set(FIELD_KEY)


def test_minimal_job_takes_builtin_defaults(daemon_cfg: DaemonConfig) -> None:
    job = load_job(job_file(daemon_cfg, 'dataset = "birds"\n'), daemon_cfg)
    assert job.name == "birdjob" and job.dataset == "birds"
    assert job.dataset_dir == daemon_cfg.paths.dataset_roots[0] / "birds"
    assert job.trigger.on_change is True and job.priority == 0
    (run,) = job.resolve_runs()
    assert run.sweep_id == "" and run.kind == "train"
    assert run.config.data_dir == str(job.dataset_dir)
    assert run.config.rank == TrainConfig().rank and run.config.lr == TrainConfig().lr
    assert run.config.cache_dir == str(daemon_cfg.paths.effective_cache_dir)


def test_precedence_job_over_defaults_over_builtin(make_config, tmp_path: Path) -> None:
    cfg = load_config(make_config(
        '[defaults]\nvariant = "tiny_16k"\npriority = 3\n[defaults.train]\nsteps = 100\n'
        'lr = 3e-4\n[defaults.lora]\nrank = 4\n[defaults.trigger]\non_change = false\n'
    ))
    (tmp_path / "datasets" / "birds").mkdir()
    job = load_job(job_file(cfg, 'dataset = "birds"\n[train]\nsteps = 50\n'
                                 '[sample]\ncfg = 3\n[validation]\nval_clips = 2\n'), cfg)
    c = job.base
    assert (c.variant, c.steps, c.lr, c.rank) == ("tiny_16k", 50, 3e-4, 4)
    assert c.batch_size == TrainConfig().batch_size
    assert c.sample_cfg == 3.0 and isinstance(c.sample_cfg, float) and c.val_clips == 2
    assert job.priority == 3 and job.trigger.on_change is False


def test_all_problems_with_keys(daemon_cfg: DaemonConfig) -> None:
    probs = job_problems(daemon_cfg, (
        'dataset = "birds"\nvariant = "larg_44k"\npriorty = 1\n'
        '[train]\nlr = 0\nsteps = "many"\nrank = 8\nprecison = "bf16"\n'
        '[lora]\nalpha = "auto"\ntarget = []\n[trigger]\nsettle_minutes = -1\n'
    ))
    text = "\n".join(probs)
    path = daemon_cfg.paths.jobs_dir / "birdjob.toml"
    assert all(p.startswith(f"{path}:") for p in probs), text
    assert "variant: unknown variant (got 'larg_44k'" in text
    assert "priorty: unknown key (did you mean 'priority'?)" in text
    assert "train.lr: invalid value: got 0.0, expected a number > 0" in text
    assert "train.steps: wrong type (got 'many', expected an integer)" in text
    assert "train.rank: this key belongs in [lora]" in text
    assert "train.precison: unknown key (did you mean 'precision'?)" in text
    assert "lora.target: invalid value" in text
    assert "trigger.settle_minutes: must not be negative" in text
    assert len(probs) == 8, text


def test_sweep_problem_names_the_sweep_entry(make_config, tmp_path: Path) -> None:
    cfg = load_config(make_config('[defaults.train]\nsteps = 10\n'))
    (tmp_path / "datasets" / "birds").mkdir()
    # A valid job; the sweep is what makes save_every invalid.
    probs = job_problems(cfg, 'dataset = "birds"\n[[sweep]]\nid = "a"\ntrain.save_every = 0\n')
    assert probs == [f"{cfg.paths.jobs_dir / 'birdjob.toml'}:sweep[0].train.save_every: "
                     "invalid value: got 0, expected an integer >= 1"]


def test_missing_dataset_and_unsafe_name(daemon_cfg: DaemonConfig) -> None:
    probs = job_problems(daemon_cfg, "[train]\nsteps = 10\n", name="bad name")
    assert any("(file name): job name is not a safe name" in p for p in probs)
    assert any(p.endswith("dataset: missing required key (expected a dataset name or path)")
               for p in probs)


@pytest.mark.parametrize("value", ["../birds", "/etc", "birds/sub", "..", "/"])
def test_dataset_escapes_are_refused(daemon_cfg: DaemonConfig, value: str) -> None:
    (daemon_cfg.paths.dataset_roots[0] / "birds" / "sub").mkdir()
    probs = job_problems(daemon_cfg, f"dataset = {value!r}\n".replace("'", '"'))
    assert len(probs) == 1 and ":dataset: " in probs[0]


def test_symlink_escape_is_refused(daemon_cfg: DaemonConfig, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, daemon_cfg.paths.dataset_roots[0] / "sneaky")
    (msg,) = job_problems(daemon_cfg, 'dataset = "sneaky"\n')
    assert "not a direct subdirectory of a dataset root" in msg


def test_dataset_by_absolute_path_and_not_yet_existing(daemon_cfg: DaemonConfig) -> None:
    root = daemon_cfg.paths.dataset_roots[0]
    job = load_job(job_file(daemon_cfg, f'dataset = "{root / "birds"}"\n'), daemon_cfg)
    assert job.dataset == "birds"
    later = load_job(job_file(daemon_cfg, 'dataset = "frogs"\n'), daemon_cfg)
    assert later.dataset_dir == root / "frogs"  # existence is checked when a run starts


def test_sweeps_resolve_to_runs(daemon_cfg: DaemonConfig) -> None:
    job = load_job(job_file(daemon_cfg, (
        'dataset = "birds"\n[lora]\nrank = 16\n'
        '[[sweep]]\nid = "r8"\nlora.rank = 8\n'
        '[[sweep]]\nid = "r32"\nlora.rank = 32\ntrain.lr = 2e-4\nsample.steps = 10\n'
    )), daemon_cfg)
    runs = job.resolve_runs()
    assert [r.sweep_id for r in runs] == ["r8", "r32"]
    assert [r.config.rank for r in runs] == [8, 32]
    assert runs[1].config.lr == 2e-4 and runs[1].config.sample_steps == 10
    assert runs[0].config.lr == TrainConfig().lr
    assert runs[0].config_hash != runs[1].config_hash


def test_sweep_problems(daemon_cfg: DaemonConfig) -> None:
    probs = job_problems(daemon_cfg, (
        'dataset = "birds"\n[[sweep]]\nid = "a"\n[[sweep]]\nid = "a"\n'
        '[[sweep]]\nlora.rank = 2\n[[sweep]]\nid = "b"\nrank = 4\n'
    ))
    text = "\n".join(probs)
    assert "sweep[1].id: duplicate sweep id" in text
    assert "sweep[2].id: missing or unsafe sweep id" in text
    assert "sweep[3].rank: rank belongs in [lora]" in text


def test_config_hash_ignores_paths_only(daemon_cfg: DaemonConfig) -> None:
    base = TrainConfig()
    same = TrainConfig(output_dir="/x", data_dir="/y", device="cpu", cache_dir="/c")
    assert config_hash(base) == config_hash(same)
    assert config_hash(base) != config_hash(TrainConfig(lr=2e-4))
    assert config_hash(TrainConfig(lr=1)) == config_hash(TrainConfig(lr=1.0))


def test_extract_run_hash_depends_on_variant_only(daemon_cfg: DaemonConfig) -> None:
    a = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[train]\nlr = 1e-3\n'), daemon_cfg)
    b = load_job(job_file(daemon_cfg, 'dataset = "birds"\n', name="other"), daemon_cfg)
    assert a.extract_run().config_hash == b.extract_run().config_hash
    assert a.extract_run().kind == "extract"


def test_init_job_text_parses_and_sets_only_dataset_and_variant(
        daemon_cfg: DaemonConfig) -> None:
    text = init_job_text("fresh", "birds", variant="tiny_44k")
    assert text.count("\n# ") > 30  # every key documented
    job = load_job(job_file(daemon_cfg, text, name="fresh"), daemon_cfg)
    assert job.base.variant == "tiny_44k"
    assert job.base == load_job(job_file(daemon_cfg, 'dataset = "birds"\nvariant = "tiny_44k"\n',
                                         name="plain"), daemon_cfg).base
    # Every commented-out default line is itself valid when uncommented.
    uncommented = "\n".join(
        line[2:] if re.match(r"# [a-z_.\[\]]+( = |$)", line) else line
        for line in text.splitlines()
    )
    job2 = load_job(job_file(daemon_cfg, uncommented, name="uncommented"), daemon_cfg)
    assert [r.sweep_id for r in job2.resolve_runs()] == ["rank8", "rank32"]
    assert job2.resolve_runs()[0].config.steps == TrainConfig().steps


def test_write_job_file_refuses_to_overwrite(daemon_cfg: DaemonConfig) -> None:
    path = write_job_file(daemon_cfg.paths.jobs_dir, "fresh", "birds")
    assert path.read_text().startswith("# selvad job 'fresh'")
    with pytest.raises(FileExistsError):
        write_job_file(daemon_cfg.paths.jobs_dir, "fresh", "other")
    assert 'dataset = "birds"' in path.read_text()
    assert sorted(p.name for p in daemon_cfg.paths.jobs_dir.iterdir()) == ["fresh.toml"]
    with pytest.raises(ValueError):
        write_job_file(daemon_cfg.paths.jobs_dir, "../evil", "birds")


def test_example_job_loads(daemon_cfg: DaemonConfig) -> None:
    (daemon_cfg.paths.dataset_roots[0] / "example").mkdir()
    text = (REPO / "etc" / "jobs" / "example.toml").read_text()
    job = load_job(job_file(daemon_cfg, text, name="example"), daemon_cfg)
    assert job.dataset == "example" and len(job.resolve_runs()) == 1
    # The commented sweep example is valid too.
    swept = text.replace("# [[sweep]]", "[[sweep]]").replace("# id =", "id =")
    swept = "\n".join(line[2:] if line.startswith(("# lora.", "# train.")) else line
                      for line in swept.splitlines())
    runs = load_job(job_file(daemon_cfg, swept, name="example"), daemon_cfg).resolve_runs()
    assert [r.sweep_id for r in runs] == ["rank8", "rank32-fast"]
    assert runs[1].config.lr_schedule == "cosine"


def test_config_hash_of_0_1_runs_is_stable_across_new_options() -> None:
    """Options added later (PiSSA, curriculum, mixup, surgery) at their defaults leave the
    hash of a 0.1 run as it was, so an upgrade does not queue every finished run again;
    set to anything else they make a new run."""
    from selva_engine.training.options import TrainConfig

    assert config_hash(TrainConfig()) == (
        "7bf0226d13326b15d3a207f1ebd0028bb38c9507701a3f5899bcbbfc267e519f")
    assert config_hash(TrainConfig(rank=8, lr=2e-4)) == (
        "edfce051ae214dbceca371c2a1ec233d4a746ac4f418098fd7415a14432f04ef")
    assert config_hash(TrainConfig(init_mode="pissa")) != config_hash(TrainConfig())


def test_newest_trainer_options_are_job_keys_and_sweepable(daemon_cfg: DaemonConfig) -> None:
    job = load_job(job_file(daemon_cfg, (
        'dataset = "birds"\n[lora]\ninit_mode = "pissa"\n'
        '[train]\ntimestep_sampling = "curriculum"\ncurriculum_switch = 0.5\n'
        'latent_mixup_alpha = 0.3\nlatent_noise_sigma = 0.02\nspectral_surgery = "hard"\n'
        '[[sweep]]\nid = "std"\nlora.init_mode = "standard"\n'
        '[[sweep]]\nid = "late"\ntrain.curriculum_switch = 0.8\n')), daemon_cfg)
    base = job.base
    assert (base.init_mode, base.timestep_sampling, base.curriculum_switch,
            base.latent_mixup_alpha, base.latent_noise_sigma, base.spectral_surgery) == (
        "pissa", "curriculum", 0.5, 0.3, 0.02, "hard")
    runs = {r.sweep_id: r.config for r in job.resolve_runs()}
    assert runs["std"].init_mode == "standard" and runs["late"].curriculum_switch == 0.8
    with pytest.raises(JobError, match=r"lora\.init_mode.*loftq"):
        load_job(job_file(daemon_cfg, 'dataset = "birds"\n[lora]\ninit_mode = "loftq"\n'),
                 daemon_cfg)
    with pytest.raises(JobError, match=r"train\.curriculum_switch"):
        load_job(job_file(daemon_cfg, 'dataset = "birds"\n[train]\ncurriculum_switch = 2.0\n'),
                 daemon_cfg)


def test_sample_videos_reach_the_run_and_paths_out_of_the_dataset_are_problems(daemon_cfg: DaemonConfig) -> None:
    job = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[sample]\nvideos = ["more/street.mp4"]\n'), daemon_cfg)
    (run,) = job.resolve_runs()
    assert run.config.sample_videos == ("more/street.mp4",)
    assert TrainConfig.from_dict(run.config.to_dict()).sample_videos == ("more/street.mp4",)
    plain = load_job(job_file(daemon_cfg, 'dataset = "birds"\n', "plain"), daemon_cfg)
    assert config_hash(plain.base) == config_hash(TrainConfig(**{**plain.base.to_dict(), "sample_videos": ()}))
    probs = job_problems(daemon_cfg, 'dataset = "birds"\n[sample]\nvideos = ["../x.mp4"]\n')
    assert any("sample.videos" in p and "inside it" in p for p in probs), probs
