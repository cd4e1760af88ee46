"""`selvad check-job` and init-job's variant choice against the configured weights (22.2)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selvad.cli import main


def _config(make_config: Callable[[str], Path], tmp_path: Path, weights: Path | None) -> Path:
    (tmp_path / "datasets" / "birds").mkdir(parents=True, exist_ok=True)
    # make_config's text ends inside [paths], where weights_dir belongs
    return make_config(f'weights_dir = "{weights}"\n' if weights else "")


def test_check_job_lists_every_problem(make_config, tmp_path: Path, capsys) -> None:
    config = _config(make_config, tmp_path, None)
    job = tmp_path / "jobs" / "bad.toml"
    job.write_text('dataset = "birds"\nrank = 8\n[train]\nlr = nan\nsteps = 0\n')
    assert main(["check-job", str(job), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{job}: 3 problems; fix the file"), out
    assert f"  {job}:rank: rank belongs in [lora]" in out
    assert f"  {job}:train.lr: out of range (got nan, expected a finite number)" in out
    assert f"  {job}:train.steps: invalid value: got 0, expected an integer >= 1" in out
    assert main(["check-job", "bad", "--config", str(config)]) == 1  # by job name too
    assert "3 problems" in capsys.readouterr().out


def test_check_job_names_missing_weights(make_config, tmp_path: Path, tiny_weights: Path,
                                         capsys) -> None:
    config = _config(make_config, tmp_path, tiny_weights)
    job = tmp_path / "jobs" / "big.toml"
    job.write_text('dataset = "birds"\nvariant = "large_44k"\n')
    assert main(["check-job", str(job), "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "valid job 'big'" in out and "problem: variant large_44k cannot run from" in out
    assert f"`selva-weights check {tiny_weights} --variant large_44k`" in out
    job.write_text('dataset = "birds"\nvariant = "tiny_16k"\n')
    assert main(["check-job", str(job), "--config", str(config)]) == 0
    assert f"weights: tiny_16k can run from {tiny_weights}" in capsys.readouterr().out


def test_init_job_picks_a_variant_the_weights_can_run(make_config, tmp_path: Path,
                                                      tiny_weights: Path, capsys) -> None:
    config = _config(make_config, tmp_path, tiny_weights)
    assert main(["init-job", "birds", "--dataset", "birds", "--config", str(config)]) == 0
    assert 'variant = "tiny_16k"' in (tmp_path / "jobs" / "birds.toml").read_text()
    out = capsys.readouterr().out
    assert "note: variant tiny_16k: the weights in" in out and "cannot run large_44k" in out
    assert f"selvad check-job {tmp_path / 'jobs' / 'birds.toml'}" in out


def test_init_job_says_when_no_variant_can_run(make_config, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    config = _config(make_config, tmp_path, empty)
    assert main(["init-job", "birds", "--dataset", "birds", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"no variant can run from {empty}" in err and "selva-weights check" in err
    assert not (tmp_path / "jobs" / "birds.toml").exists()
