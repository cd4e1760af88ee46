"""The Inspector in validation: figures per clip, its flags as warnings, thresholds from
dataset.toml (or the job), skip_rejected, and the audio that must be an error."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from selvad.datasets import validate as V

SR = 44100
VARIANT = "tiny_44k"


def clean(seconds: float = 8.0, amp: float = 0.3, seed: int = 0) -> np.ndarray:
    """A tone that swells and fades each second over a -70 dBFS floor: clean by every rule."""
    t = np.arange(int(seconds * SR)) / SR
    floor = 3e-4 * np.random.default_rng(seed).standard_normal(t.size)
    return (amp * (0.05 + 0.95 * np.sin(np.pi * t) ** 2) * np.sin(2 * np.pi * 330 * t)
            + floor).astype(np.float32)


def npz(path: Path) -> None:
    np.savez(path, clip_features=np.zeros((1, 64, 1024), np.float32),
             sync_features=np.zeros((1, 192, 768), np.float32), prompt=np.array("a tone"),
             duration=np.array(8.0))


def make(root: Path, clips: dict[str, tuple[np.ndarray, str]]) -> Path:
    """A dataset of `name -> (samples, format)` clips, each with its .npz."""
    d = root / "ds"
    d.mkdir()
    for name, (x, fmt) in clips.items():
        npz(d / f"{name}.npz")
        sf.write(d / f"{name}.{fmt.lower()}", x, SR, format=fmt)
    return d


def codes(report) -> set[tuple[str, str, str]]:
    return {(f.severity, f.file, f.code) for f in report.findings}


@pytest.fixture(scope="module")
def four(tmp_path_factory) -> Path:
    """The issue's dataset: a clipped clip, a noisy clip, an MP3-sourced clip, a quiet clip,
    and a clean one."""
    rng = np.random.default_rng(1)
    clipped = np.clip(clean(amp=3.0), -1.0, 1.0)
    noisy = clean() + 0.2 * rng.standard_normal(8 * SR).astype(np.float32)
    d = make(tmp_path_factory.mktemp("inspect"), {
        "ok": (clean(), "WAV"), "clipped": (clipped, "WAV"), "noisy": (noisy, "WAV"),
        "quiet": (clean(amp=0.003), "WAV")})
    # broadband bursts through a low-bitrate MP3 (LAME's low-pass cuts the top off)
    t = np.arange(8 * SR) / SR
    bursts = 0.2 * (0.05 + 0.95 * np.sin(np.pi * t) ** 2) * rng.standard_normal(t.size)
    npz(d / "mp3.npz")
    sf.write(d / "mp3.mp3", bursts.astype(np.float32), SR, format="MP3",
             compression_level=0.99, bitrate_mode="CONSTANT")
    return d


def test_the_four_problem_clips_get_their_figures_and_warnings(four):
    r = V.validate_dataset(four, VARIANT)
    got = codes(r)
    assert r.ok and len(r.clips) == 5, r.format_human()
    assert {("warning", "clipped.wav", "near-clipping"), ("warning", "clipped.wav", "clipped"),
            ("warning", "noisy.wav", "low-snr"), ("warning", "mp3.mp3", "codec-shelf"),
            ("warning", "mp3.mp3", "lossy"), ("warning", "quiet.wav", "quiet")} <= got
    assert not [c for c in got if c[1] == "ok.wav"]
    figures = r.inspection
    assert figures["noisy.wav"]["snr_db"] < 15 < figures["ok.wav"]["snr_db"]
    assert figures["mp3.mp3"]["hf_shelf_db"] > 40 > figures["ok.wav"]["hf_shelf_db"]
    assert figures["quiet.wav"]["lufs"] < -40 < figures["ok.wav"]["lufs"]
    assert figures["clipped.wav"]["true_peak_dbtp"] > -0.5 and figures["clipped.wav"]["peak"] > 0.99
    assert sorted(r.flagged) == ["clipped", "mp3", "noisy", "quiet"] and r.skipped == []
    text = r.format_human()
    assert "ok.wav\n  SNR" in text and "LUFS" in text and "dBTP" in text
    low = next(f for f in r.findings if f.code == "low-snr")
    assert "dB" in low.message and "min_snr_db" in low.fix
    data = tomllib.loads(r.to_toml())  # validation.toml
    assert {e["file"] for e in data["inspection"]} == {"ok.wav", "clipped.wav", "noisy.wav",
                                                        "mp3.mp3", "quiet.wav"}
    assert data["thresholds"]["min_snr_db"] == 15.0 and json.loads(r.to_json()) == data


def test_dataset_toml_sets_the_thresholds_and_skip_rejected(four):
    (four / "dataset.toml").write_text("[inspect]\nmin_snr_db = 0\ncheck_codec = false\n"
                                       "clip_peak = 1.0\nskip_rejected = true\n")
    try:
        r = V.validate_dataset(four, VARIANT)
        assert r.ok and r.flagged == ["quiet"] and r.skipped == ["quiet"], r.format_human()
        assert {c.stem for c in r.clips} == {"ok", "clipped", "noisy", "mp3"}
        assert ("warning", "", "skipped-flagged") in codes(r)
        assert "left out (skip_rejected): quiet" in r.format_human()
        # the job's [inspect] table overrides the dataset file key by key
        r = V.validate_dataset(four, VARIANT, inspect={"skip_rejected": False})
        assert r.skipped == [] and len(r.clips) == 5 and r.thresholds.min_snr_db == 0
    finally:
        (four / "dataset.toml").unlink()


@pytest.mark.parametrize("text, says", [
    ("[inspect]\nmin_snr = 3\n", "inspect.min_snr: unknown key (did you mean 'min_snr_db'?)"),
    ("[inspect]\nmax_silent_fraction = 2.0\n", "inspect.max_silent_fraction: out of range "
                                                "(got 2.0, expected a number from 0 to 1)"),
    ("[inspect]\nmin_snr_db = nan\n", "inspect.min_snr_db: out of range"),
    ("[inspect]\nskip_rejected = 'yes'\n", "inspect.skip_rejected: wrong type"),
    ("[inpsect]\n", "inpsect: unknown section (did you mean 'inspect'?)"),
    ("[inspect\n", "invalid TOML"),
])
def test_a_bad_dataset_toml_is_an_error_naming_the_key(tmp_path, text, says):
    d = make(tmp_path, {"ok": (clean(), "WAV")})
    (d / "dataset.toml").write_text(text)
    r = V.validate_dataset(d, VARIANT)
    bad = [f for f in r.findings if f.code == "bad-dataset-file"]
    assert not r.ok and bad and bad[0].file == "dataset.toml", r.format_human()
    assert says in bad[0].message and bad[0].fix


def test_float_samples_far_beyond_full_scale_are_an_error(tmp_path):
    """A 3.4e38 sample (what a broken float export holds) teaches garbage: an error; a mix
    with overs up to +3 dB is only a warning."""
    wild, hot = clean(), clean()
    wild[1000] = 3.4e38
    hot[::50] = 1.4
    d = make(tmp_path, {"wild": (wild, "WAV"), "hot": (hot, "WAV"), "ok": (clean(), "WAV")})
    for name, x in (("wild", wild), ("hot", hot)):
        sf.write(d / f"{name}.wav", x, SR, subtype="FLOAT")
    r = V.validate_dataset(d, VARIANT)
    got = codes(r)
    assert ("error", "wild.wav", "out-of-range") in got and not r.ok
    assert ("warning", "hot.wav", "over-full-scale") in got
    assert {c.stem for c in r.clips} == {"hot", "ok"}
    wild_finding = next(f for f in r.findings if f.code == "out-of-range")
    assert "3.4e+38" in wild_finding.message and "normalise" in wild_finding.fix


def test_channels_that_cancel_in_the_mono_mix_are_an_error(tmp_path):
    x = clean()
    d = make(tmp_path, {"ok": (x, "WAV")})
    npz(d / "flipped.npz")
    sf.write(d / "flipped.wav", np.stack([x, -x], 1), SR)
    r = V.validate_dataset(d, VARIANT)
    bad = next(f for f in r.findings if f.code == "phase-cancel")
    assert bad.severity == "error" and bad.file == "flipped.wav" and "polarity" in bad.fix
    assert "near silence" in bad.message and [c.stem for c in r.clips] == ["ok"]


def test_comfyui_feature_files_as_users_have_them(tmp_path):
    """A whole-video .npz (648/2016 rows) trains trimmed, a 12,000-character prompt is kept
    with a warning, and the sanitiser's dotfile name is reported as skipped, not dropped
    silently."""
    d = make(tmp_path, {"long": (clean(), "WAV"), "dot": (clean(), "WAV")})
    np.savez(d / "long.npz", clip_features=np.zeros((1, 648, 1024), np.float32),
             sync_features=np.zeros((1, 2016, 768), np.float32),
             prompt=np.array("dog " * 3000), duration=np.array(81.0))
    (d / "dot.npz").rename(d / ".._escape_001.npz")
    (d / "dot.wav").rename(d / ".._escape_001.wav")
    r = V.validate_dataset(d, VARIANT)
    got = codes(r)
    assert r.ok and [c.stem for c in r.clips] == ["long"], r.format_human()
    assert {("warning", "long.npz", "clip-length"), ("warning", "long.npz", "long-prompt"),
            ("warning", ".._escape_001.npz", "hidden-clip")} <= got
    hidden = next(f for f in r.findings if f.code == "hidden-clip")
    assert "skipped" in hidden.message and "_escape_001.npz" in hidden.fix
    assert len(r.clips[0].prompt) == 12_000


def test_the_run_child_writes_the_skipped_clips_into_the_runs_config(four, tmp_path, capsys):
    """With skip_rejected, the child's validation.toml lists the clips left out and the
    run's config JSON carries them as exclude_clips, which training reads."""
    from selva_engine.training.options import TrainConfig
    from selvad.runs.child import write_validation

    (four / "dataset.toml").write_text("[inspect]\nskip_rejected = true\n")
    try:
        cfg_json = tmp_path / "config.json"
        cfg_json.write_text(json.dumps(TrainConfig(data_dir=str(four), variant=VARIANT).to_dict()))
        write_validation(cfg_json, tmp_path / "validation.toml")
        report = tomllib.loads((tmp_path / "validation.toml").read_text())
        cfg = TrainConfig.from_dict(json.loads(cfg_json.read_text()))
        assert report["skipped"] == ["clipped", "mp3", "noisy", "quiet"]
        assert cfg.exclude_clips == ("clipped", "mp3", "noisy", "quiet")
        assert '"event": "validation"' in capsys.readouterr().out
    finally:
        (four / "dataset.toml").unlink()


def test_a_section_nothing_applies_is_an_error_not_ignored(tmp_path):
    d = make(tmp_path, {"ok": (clean(), "WAV")})
    (d / "dataset.toml").write_text("[mastering]\nloudness = true\n")
    r = V.validate_dataset(d, VARIANT)
    bad = next(f for f in r.findings if f.code == "bad-dataset-file")
    assert not r.ok and "mastering: unknown section" in bad.message


def test_a_bad_prepare_value_in_the_dataset_file_is_in_the_report(tmp_path):
    d = make(tmp_path, {"ok": (clean(), "WAV")})
    (d / "dataset.toml").write_text("[prepare]\nloudness = true\ntarget_lufs = 5.0\nspeed = 2\n")
    r = V.validate_dataset(d, VARIANT)
    messages = " ".join(f.message for f in r.findings if f.code == "bad-dataset-file")
    assert not r.ok
    assert "prepare.target_lufs: out of range" in messages and "prepare.speed" in messages
    (d / "dataset.toml").write_text("[prepare]\nloudness = true\ntarget_lufs = -16.0\n")
    assert V.validate_dataset(d, VARIANT).ok


def test_a_bad_augment_value_in_the_dataset_file_is_in_the_report(tmp_path):
    d = make(tmp_path, {"ok": (clean(), "WAV")})
    (d / "dataset.toml").write_text("[augment]\nenabled = true\nstretch = 0.5\nvariants = 2.5\nspeed = 2\n")
    r = V.validate_dataset(d, VARIANT)
    messages = [f.message for f in r.findings if f.code == "bad-dataset-file"]
    assert not r.ok and len(messages) == 3
    assert "augment.stretch: out of range (got 0.5, expected a number from 0 to 0.1)" in messages[0]
    assert "augment.variants: wrong type (got 2.5, expected an integer)" in messages[1]
    assert "augment.speed" in messages[2]
    (d / "dataset.toml").write_text("[augment]\nenabled = true\nstretch = 0.1\nvariants = 4\n")
    assert V.validate_dataset(d, VARIANT).ok


def test_the_web_page_lists_the_figures_of_the_kept_report(four, tmp_path):
    import os

    from selvad.datasets.report import save_last_report
    from selvad.runs.queue import RunQueue
    from selvad.runs.watched import WatchedTable
    from tests.daemon.web.test_app import client_for
    from tests.daemon.web.test_listening import _tree

    cfg, q, _ = _tree(tmp_path)
    save_last_report(V.validate_dataset(four, VARIANT), cfg.paths.state_dir,
                     os.path.abspath(four))
    WatchedTable(q).record("dataset", os.path.abspath(four), "ds")
    assert isinstance(q, RunQueue)
    home = client_for(cfg).get("/").text
    figures = home.split('class="findings figures"', 1)[1].split("</ul>", 1)[0]
    assert 'data-figures="5"' in home and "<b>noisy.wav</b>: SNR" in figures
    assert "LUFS" in figures and "dBTP" in figures and "HF shelf" in figures


def test_skip_rejected_that_leaves_no_clip_is_an_error(tmp_path):
    d = make(tmp_path, {"a": (clean(), "WAV"), "b": (clean(seed=3), "WAV")})
    (d / "dataset.toml").write_text("[inspect]\nmin_snr_db = 100\nskip_rejected = true\n")
    r = V.validate_dataset(d, VARIANT)
    assert not r.ok and ("error", "", "all-skipped") in codes(r) and r.skipped == ["a", "b"]
