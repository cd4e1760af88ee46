"""Job files' [augment]: keys, types and the node's ranges (the stretch the notes' safe one) in
the schema's words; the template documents it; a config with it is another training run."""

from __future__ import annotations

from pathlib import Path

import pytest

from selvad.config.daemon import DaemonConfig
from selvad.config.jobs import config_hash, load_job
from tests.daemon.config.test_jobs import job_file, job_problems


def test_augment_values_reach_the_run_config(daemon_cfg: DaemonConfig) -> None:
    job = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[augment]\nenabled = true\nvariants = 3\n'
                            'gain_db = 2\nstretch = "auto"\nkeep_originals = false\n'), daemon_cfg)
    (run,) = job.resolve_runs()
    assert run.config.augment_settings == {"enabled": True, "variants": 3, "gain_db": 2.0,
                                           "keep_originals": False}


@pytest.mark.parametrize(("line", "key", "got", "expected"), [
    ("stretch = 0.2", "stretch", "0.2", "a number from 0 to 0.1"),
    ("pitch_semitones = 5.0", "pitch_semitones", "5.0", "a number from 0 to 4"),
    ("gain_db = 13.0", "gain_db", "13.0", "a number from 0 to 12"),
    ("variants = 21", "variants", "21", "an integer from 1 to 20"),
])
def test_out_of_range_values_name_the_file_and_key(daemon_cfg: DaemonConfig, line, key, got, expected) -> None:
    path = daemon_cfg.paths.jobs_dir / "birdjob.toml"
    problems = job_problems(daemon_cfg, f'dataset = "birds"\n[augment]\n{line}\n')
    assert problems[0] == f"{path}:augment.{key}: out of range (got {got}, expected {expected})"


def test_wrong_type_and_unknown_key(daemon_cfg: DaemonConfig) -> None:
    problems = job_problems(daemon_cfg, 'dataset = "birds"\n[augment]\nenabled = "yes"\npitch = 1\n')
    assert len(problems) == 2
    assert "augment.enabled: wrong type" in problems[0]
    assert "augment.pitch" in problems[1] and "unknown" in problems[1]


def test_augment_is_another_training_run_but_the_same_extraction(daemon_cfg: DaemonConfig) -> None:
    plain = load_job(job_file(daemon_cfg, 'dataset = "birds"\n', "a"), daemon_cfg)
    aug = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[augment]\nenabled = true\n', "b"), daemon_cfg)
    assert config_hash(plain.base) != config_hash(aug.base)
    # the variants depend on the training split: the training run encodes them, not extraction
    assert plain.extract_run().config_hash == aug.extract_run().config_hash


def test_job_template_documents_augment(daemon_cfg: DaemonConfig, tmp_path: Path) -> None:
    from selvad.config.templates import init_job_text

    text = init_job_text("j", "birds", "tiny_16k")
    section = text.split("[augment]", 1)[1].split("[trigger]", 1)[0]
    assert "# variants = " in section and "0..0.1" in section and "never validated on" in section
    job = job_file(daemon_cfg, text.replace("# variants = ", "variants = 4 #"), "t")
    assert load_job(job, daemon_cfg).base.augment_variants == 4
