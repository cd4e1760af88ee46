"""Daemon config: defaults, path resolution, every problem reported with file:key."""

from __future__ import annotations

from pathlib import Path

import pytest

from selvad.config.daemon import DEFAULT_CONFIG_PATH, DaemonConfig, load_config
from selvad.config.schema import ConfigError

REPO = Path(__file__).resolve().parents[3]


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_defaults_and_relative_paths(make_config, tmp_path: Path) -> None:
    cfg = load_config(make_config(""))
    assert cfg.paths.dataset_roots == (tmp_path / "datasets",)
    assert cfg.paths.jobs_dir == tmp_path / "jobs"
    assert cfg.paths.queue_path == tmp_path / "state" / "queue.sqlite3"
    assert cfg.paths.effective_cache_dir == tmp_path / "state" / "cache"
    assert cfg.paths.weights_dir is None
    assert cfg.watch.settle_seconds == 10.0 and cfg.watch.use_polling is False
    assert cfg.logging.format == "auto" and cfg.device.name == ("auto",)
    assert DEFAULT_CONFIG_PATH == Path("/etc/selvad/selvad.toml")


def test_empty_file_gives_builtin_defaults(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg.paths == DaemonConfig().paths
    assert cfg.paths.dataset_roots[0].is_absolute()


def test_values_parsed(make_config) -> None:
    path = make_config(
        '[device]\nname = "cuda:1"\n[watch]\nsettle_seconds = 2\nuse_polling = true\n'
        'ignore = ["*.bak"]\n[schedule]\ntraining_windows = ["mon-fri 22:00-07:00"]\n'
        '[logging]\nformat = "json"\nlevel = "DEBUG"\n'
    )
    cfg = load_config(path)
    assert cfg.device.name == ("cuda:1",)
    assert cfg.watch.settle_seconds == 2.0 and isinstance(cfg.watch.settle_seconds, float)
    assert cfg.watch.use_polling and cfg.watch.ignore == ("*.bak",)
    assert cfg.schedule.training_windows == ("mon-fri 22:00-07:00",)


def test_all_problems_reported_with_file_and_key(make_config) -> None:
    path = make_config(
        '[watch]\nsetle_seconds = 3\npoll_interval = "fast"\n[device]\nname = "gpu"\n'
        '[logging]\nformat = "xml"\n[schedule]\ntraining_windows = ["25:00-07:00"]\n'
        '[retention]\nkeep_last_checkpoints = -1\n[wach]\n'
    )
    probs = problems_of(path)
    text = "\n".join(probs)
    assert len(probs) == 7, text
    assert all(p.startswith(f"{path}:") for p in probs)
    assert f"{path}:watch.setle_seconds: unknown key (did you mean 'settle_seconds'?)" in probs
    assert any("watch.poll_interval: wrong type (got 'fast', expected a number)" in p for p in probs)
    assert any("device.name: unknown device (got 'gpu'" in p for p in probs)
    assert any("logging.format" in p and "json" in p for p in probs)
    assert any("schedule.training_windows[0]" in p for p in probs)
    assert any("retention.keep_last_checkpoints" in p for p in probs)
    assert any("wach: unknown section (did you mean 'watch'?)" in p for p in probs)


def test_broken_toml_names_file_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[paths]\njobs_dir = "x\n')
    (msg,) = problems_of(path)
    assert msg.startswith(f"{path}: invalid TOML") and "line 2" in msg and "column" in msg


def test_missing_file(tmp_path: Path) -> None:
    (msg,) = problems_of(tmp_path / "nope.toml")
    assert "nope.toml: cannot read file" in msg


def test_defaults_checked_with_job_schema(make_config) -> None:
    path = make_config(
        '[defaults]\nvariant = "huge"\ndataset = "x"\n[defaults.train]\nlr = -1\nrank = 4\n'
        '[defaults.lora]\nrnak = 8\n'
    )
    probs = problems_of(path)
    text = "\n".join(probs)
    assert "defaults.variant: unknown variant (got 'huge'" in text
    assert "defaults.dataset: unknown key" in text
    assert "defaults.train.lr: invalid value: got -1.0, expected a number > 0" in text
    assert "defaults.train.rank: this key belongs in [lora]" in text
    assert "defaults.lora.rnak: unknown key (did you mean 'rank'?)" in text


def test_example_config_loads() -> None:
    cfg = load_config(REPO / "etc" / "selvad.toml")
    assert cfg.paths.state_dir == Path("/var/lib/selvad/state")
    assert all(p.is_absolute() for p in cfg.paths.dataset_roots)
