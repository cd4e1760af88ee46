"""[prepare] in a tiny training run: applied, recorded in meta.json, never mixed with plain latents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selva_engine.audio.prepare import PrepareSettings
from selva_engine.data.extract import FeatureCache, latent_key
from selva_engine.data.prepare_file import read_prepare_settings
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import TrainError, train
from tests.engine.training.test_trainer import config


def test_latent_key_is_todays_without_steps_and_differs_with_settings():
    plain = FeatureCache.key("abc", "vae")
    assert latent_key("abc", "vae") == plain
    assert latent_key("abc", "vae", PrepareSettings()) == plain
    assert latent_key("abc", "vae", PrepareSettings(target_lufs=-16.0)) == plain  # a setting of a step that is off
    loud = latent_key("abc", "vae", PrepareSettings(loudness=True))
    assert loud != plain
    assert latent_key("abc", "vae", PrepareSettings(loudness=True, target_lufs=-16.0)) not in (plain, loud)
    assert latent_key("abc", "vae", PrepareSettings(loudness=True, hf_smooth=True)) not in (plain, loud)


def _done(events):
    return next(e for e in events if e["event"] == "extract_done")


def test_loudness_run_trains_records_it_and_keeps_its_own_latents(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 4)
    events: list[dict] = []
    train(config(data, tmp_path / "loud", tiny_weights, steps=2, save_every=2, prepare_loudness=True),
          events=events.append)
    assert _done(events)["audio_encoded"] == 4
    assert next(e for e in events if e["event"] == "extract_start")["prepare"] == ["loudness"]
    meta = json.loads((tmp_path / "loud" / "meta.json").read_text())
    assert meta["prepare"] == {"steps": ["loudness"], "loudness": {"target_lufs": -23.0, "true_peak_dbtp": -1.0}}
    # A plain run on the same clips and cache encodes again: prepared latents are not plain ones.
    events = []
    train(config(data, tmp_path / "plain", tiny_weights, steps=2, save_every=2), events=events.append)
    assert _done(events)["audio_encoded"] == 4
    assert json.loads((tmp_path / "plain" / "meta.json").read_text())["prepare"] == {"steps": []}
    cache = tmp_path / "cache" / "latent"
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == 8
    # dataset.toml [prepare] with the same settings: the prepared entries are hits.
    (data / "dataset.toml").write_text("[prepare]\nloudness = true\n")
    events = []
    train(config(data, tmp_path / "file", tiny_weights, steps=2, save_every=2), events=events.append)
    assert _done(events)["audio_cached"] == 4 and _done(events)["audio_encoded"] == 0
    # The job's value wins over the dataset file's: off -> the plain entries.
    events = []
    train(config(data, tmp_path / "off", tiny_weights, steps=2, save_every=2, prepare_loudness=False),
          events=events.append)
    assert _done(events)["audio_cached"] == 4
    assert json.loads((tmp_path / "off" / "meta.json").read_text())["prepare"] == {"steps": []}
    means = [np.load(p)["mean"] for p in entries]
    assert not any(np.array_equal(a, b) for i, a in enumerate(means) for b in means[i + 1:])


def test_dataset_file_prepare_problems_are_reported_and_left_out(tmp_path):
    (tmp_path / "dataset.toml").write_text("[prepare]\nloudness = true\ntarget_lufs = -60\nlufs = 3\n")
    settings, problems = read_prepare_settings(tmp_path, {"hf_smooth": True})
    assert settings == PrepareSettings(loudness=True, hf_smooth=True)
    assert len(problems) == 2
    assert "target_lufs: out of range (got -60, expected -40 to -6)" in str(problems[0])
    assert "unknown [prepare] key 'lufs'" in str(problems[1])


def test_bad_prepare_option_is_refused(tmp_path, tiny_weights):
    cfg = TrainConfig(prepare_blend=1.5)
    assert ("prepare_blend", "out of range (got 1.5, expected 0 to 1)") in cfg.problems()
    with pytest.raises(TrainError, match="prepare_blend"):
        train(config(tmp_path, tmp_path / "o", tiny_weights, prepare_blend=1.5))


def test_extract_command_applies_the_prepare_values(tmp_path, make_clips, tiny_weights, capsys):
    from selva_engine.cli import extract_main

    data = make_clips(tmp_path / "data", 2)
    args = ["--data_dir", str(data), "--variant", "tiny_16k", "--selva_dir", str(tiny_weights),
            "--cache_dir", str(tmp_path / "cache"), "--device", "cpu", "--json"]
    assert extract_main([*args, "--prepare", '{"loudness": true}']) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert next(e for e in events if e["event"] == "extract_start")["prepare"] == ["loudness"]
    assert extract_main(args) == 0  # plain: other entries, encoded again
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert next(e for e in events if e["event"] == "extract_done")["audio_encoded"] == 2


def test_spectral_match_aims_at_the_weights_vae_means(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 2)
    events: list[dict] = []
    train(config(data, tmp_path / "match", tiny_weights, steps=2, save_every=2, prepare_spectral_match=True,
                 prepare_match_strength=0.5), events=events.append)
    assert _done(events)["audio_encoded"] == 2
    meta = json.loads((tmp_path / "match" / "meta.json").read_text())
    assert meta["prepare"] == {"steps": ["spectral_match"],
                               "spectral_match": {"match_strength": 0.5, "match_max_gain_db": 12.0}}
