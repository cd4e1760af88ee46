"""Job files' [prepare]: keys, types and the nodes' ranges in the schema's words; extraction runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from selvad.config.daemon import DaemonConfig
from selvad.config.jobs import config_hash, load_job
from tests.daemon.config.test_jobs import job_file, job_problems


def test_prepare_values_reach_the_run_config(daemon_cfg: DaemonConfig) -> None:
    job = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[prepare]\nloudness = true\ntarget_lufs = -20\n'
                            'hf_smooth = "auto"\n'), daemon_cfg)
    (run,) = job.resolve_runs()
    assert run.config.prepare_settings == {"loudness": True, "target_lufs": -20.0}


@pytest.mark.parametrize(("line", "key", "got", "expected"), [
    ("target_lufs = -50", "target_lufs", "-50", "a number from -40 to -6"),
    ("true_peak_dbtp = 1.0", "true_peak_dbtp", "1.0", "a number from -6 to 0"),
    ("ratio = 10", "ratio", "10", "a number from 1.5 to 4"),
    ("mix = 1.5", "mix", "1.5", "a number from 0 to 1"),
    ("cutoff_hz = 500", "cutoff_hz", "500", "a number from 2000 to 20000"),
])
def test_out_of_range_values_name_the_file_and_key(daemon_cfg: DaemonConfig, line, key, got, expected) -> None:
    path = daemon_cfg.paths.jobs_dir / "birdjob.toml"
    (problem,) = job_problems(daemon_cfg, f'dataset = "birds"\n[prepare]\n{line}\n')
    assert problem == f"{path}:prepare.{key}: out of range (got {got}, expected {expected})"


def test_wrong_type_and_unknown_key(daemon_cfg: DaemonConfig) -> None:
    problems = job_problems(daemon_cfg, 'dataset = "birds"\n[prepare]\nloudness = "yes"\nlufs = -20\n')
    assert len(problems) == 2
    assert "prepare.loudness: wrong type" in problems[0]
    assert "prepare.lufs" in problems[1] and "unknown" in problems[1]


def test_extraction_runs_differ_with_prepare_and_stay_as_before_without(daemon_cfg: DaemonConfig) -> None:
    plain = load_job(job_file(daemon_cfg, 'dataset = "birds"\n', "a"), daemon_cfg)
    loud = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[prepare]\nloudness = true\n', "b"), daemon_cfg)
    other = load_job(job_file(daemon_cfg, 'dataset = "birds"\n[prepare]\nloudness = false\n', "c"), daemon_cfg)
    digests = {j.extract_run().config_hash for j in (plain, loud, other)}
    assert len(digests) == 3
    # no [prepare]: the digest (and each training run's config hash) of every earlier version
    before = json.dumps({"kind": "extract", "variant": plain.base.variant}, sort_keys=True)
    assert plain.extract_run().config_hash == hashlib.sha256(before.encode()).hexdigest()
    assert config_hash(plain.base) != config_hash(loud.base)


def test_job_template_documents_prepare(daemon_cfg: DaemonConfig, tmp_path: Path) -> None:
    from selvad.config.templates import init_job_text

    text = init_job_text("j", "birds", "tiny_16k")
    assert "[prepare]" in text and "# loudness = " in text and "soxr VHQ" in text
