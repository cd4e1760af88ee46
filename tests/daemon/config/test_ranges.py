"""Every numeric job setting has a range, said in the schema's `file:key: problem (got X,
expected Y)` form (issue 21.4), and `timestep_mode` is the same option as selva-train's."""

from __future__ import annotations

import pytest

from selvad.config.daemon import DaemonConfig, load_config
from selvad.config.jobs import JobError, load_job
from selvad.config.schema import ConfigError, read_toml

HOSTILE = [
    ("priority = 9223372036854775808", "priority", "1,000,000 to 1,000,000"),
    ("priority = 2000000000", "priority", "1,000,000"),
    ("[train]\nsteps = 9223372036854775808", "train.steps", "-2^63 to 2^63-1"),
    ("[train]\nlr = inf", "train.lr", "a finite number"),
    ("[train]\nlr = nan", "train.lr", "a finite number"),
    ("[lora]\nalpha = inf", "lora.alpha", "a finite number"),
    ("[train]\nweight_decay = nan", "train.weight_decay", "a finite number"),
    ("[trigger]\nsettle_minutes = nan", "trigger.settle_minutes", "a finite number"),
    ("[trigger]\nsettle_minutes = 1e12", "trigger.settle_minutes", "10,080"),
    ("[train]\nseed = 18446744073709551616", "train.seed", "-2^63 to 2^63-1"),
    ("[train]\nseed = 1099511627776", "train.seed", "4,294,967,295"),
    ("[train]\nseed = -1", "train.seed", "from 0"),
    ("[lora]\nrank = 1000000", "lora.rank", "at most 1,024"),
    ("[train]\nbatch_size = 1000000", "train.batch_size", "at most 4,096"),
]


def _problems(cfg: DaemonConfig, text: str) -> list[str]:
    path = cfg.paths.jobs_dir / "hostile.toml"
    path.write_text('dataset = "birds"\n' + text + "\n")
    with pytest.raises(JobError) as info:
        load_job(path, cfg)
    return info.value.problems


@pytest.mark.parametrize(("text", "key", "expected"), HOSTILE)
def test_hostile_number_is_one_problem_in_the_schema_format(
        daemon_cfg: DaemonConfig, text: str, key: str, expected: str) -> None:
    (problem,) = _problems(daemon_cfg, text)
    path = daemon_cfg.paths.jobs_dir / "hostile.toml"
    assert problem.startswith(f"{path}:{key}: out of range (got "), problem
    assert expected in problem.split("expected", 1)[1], problem


def test_values_at_the_limits_load(daemon_cfg: DaemonConfig) -> None:
    path = daemon_cfg.paths.jobs_dir / "edge.toml"
    path.write_text('dataset = "birds"\npriority = -1000000\n[lora]\nrank = 1024\n'
                    '[train]\nseed = 4294967295\nbatch_size = 4096\nlr = 10\n'
                    '[trigger]\nsettle_minutes = 0\n')
    job = load_job(path, daemon_cfg)
    assert (job.priority, job.base.rank, job.base.seed, job.base.batch_size) == (
        -1000000, 1024, 2**32 - 1, 4096)


def test_all_problems_are_listed(daemon_cfg: DaemonConfig) -> None:
    problems = _problems(daemon_cfg, "[lora]\nrank = 1000000\n[train]\nlr = inf\nseed = -1")
    assert len(problems) == 3 and all("out of range" in p for p in problems)


def test_a_file_nested_5000_deep_is_one_problem(daemon_cfg: DaemonConfig) -> None:
    path = daemon_cfg.paths.jobs_dir / "deep.toml"
    path.write_text('dataset = "birds"\nx = ' + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(JobError) as info:
        load_job(path, daemon_cfg)
    (problem,) = info.value.problems
    assert problem.startswith(f"{path}: nested too deeply"), problem
    with pytest.raises(ConfigError):
        read_toml(path)


def test_daemon_config_refuses_a_nan_in_defaults(make_config) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(make_config("[defaults.train]\nlr = nan\n"))
    assert any("defaults.train.lr: out of range" in p for p in info.value.problems)


def test_timestep_mode_is_timestep_sampling(daemon_cfg: DaemonConfig) -> None:
    path = daemon_cfg.paths.jobs_dir / "modes.toml"
    path.write_text('dataset = "birds"\n[train]\ntimestep_mode = "logit_normal"\n')
    assert load_job(path, daemon_cfg).base.timestep_sampling == "logit_normal"
    (problem,) = _problems(daemon_cfg, '[train]\ntimestep_mode = "curriculum"\n'
                                       'timestep_sampling = "uniform"')
    assert "sets the same option as train.timestep_mode" in problem
    (problem,) = _problems(daemon_cfg, '[train]\ntimestep_mode = "sideways"')
    assert "train.timestep_mode" in problem and "uniform, logit_normal, curriculum" in problem


def test_a_key_of_a_section_says_where_it_belongs(daemon_cfg: DaemonConfig) -> None:
    problems = _problems(daemon_cfg, "rank = 8\nsettle_minutes = 2\n[[sweep]]\nid = 'a'\nlr = 1e-4")
    assert any(p.endswith(":rank: rank belongs in [lora] (expected the line under [lora], "
                          "or lora.rank = ...)") for p in problems), problems
    assert any(":settle_minutes: settle_minutes belongs in [trigger]" in p for p in problems)
    assert any(":sweep[0].lr: lr belongs in [train]" in p for p in problems), problems
