"""[augment] in tiny training runs: variants encoded once after [prepare], trained on, never
validated on, recorded in meta.json; the prepared reference written beside the original."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from selva_engine.audio.augment import AugmentSettings
from selva_engine.data.augment_file import read_augment_settings
from selva_engine.outputs.checkpoint import find_latest
from selva_engine.training.options import TrainConfig
from selva_engine.training.split import split_with_variants
from selva_engine.training.trainer import TrainError, train
from tests.engine.training.test_trainer import config


def _clip(stem: str, origin: str = "") -> SimpleNamespace:
    return SimpleNamespace(stem=stem, origin=origin)


def test_the_split_is_the_originals_and_a_held_out_clips_variants_are_dropped():
    originals = [_clip(f"c{i}") for i in range(8)]
    plain_train, plain_val = split_with_variants(originals, None, 42)
    (held,) = [originals[i].stem for i in plain_val]  # 8 clips: one held out
    variants = [_clip(f"{c.stem}@aug0{n}", c.stem) for c in originals for n in (1, 2)]
    clips = originals + variants  # here even the held-out clip has variants
    train_idx, val_idx = split_with_variants(clips, None, 42)
    assert val_idx == plain_val  # turning augmentation on never moves the held-out clip
    trained = [clips[i] for i in train_idx]
    assert held not in {c.stem for c in trained} and held not in {c.origin for c in trained}
    assert len(trained) == 7 + 14 and train_idx[:7] == plain_train
    only_variants, _ = split_with_variants(clips, None, 42, keep_originals=False)
    assert all(clips[i].origin for i in only_variants) and len(only_variants) == 14


def _events(kind, events):
    return next(e for e in events if e["event"] == kind)


@pytest.mark.slow
def test_a_prepared_and_augmented_run_trains_on_variants_and_never_validates_on_them(
        tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 4)
    (data / "dataset.toml").write_text("[augment]\nenabled = true\ngain_db = 6.0\npitch_semitones = 1.0\n")
    events: list[dict] = []
    cfg = config(data, tmp_path / "aug", tiny_weights, steps=4, save_every=4, val_clips=1,
                 prepare_loudness=True, augment_stretch=0.05)
    assert train(cfg, events=events.append).status == "done"
    assert _events("extract_start", events)["variants"] == 6  # 3 training clips x 2
    assert _events("extract_done", events)["audio_encoded"] == 4 + 6
    start = _events("train_start", events)
    assert (start["train_clips"], start["val_clips"]) == (9, 1)
    split = find_latest(tmp_path / "aug")[1]["split"]
    (held,) = split["val"]
    assert "@aug" not in held and not any(s.startswith(held) for s in split["train"])
    originals = sorted(s for s in split["train"] if "@aug" not in s)
    assert sorted(split["train"]) == sorted(originals + [f"{s}@aug0{n}" for s in originals for n in (1, 2)])
    meta = json.loads((tmp_path / "aug" / "meta.json").read_text())
    assert meta["augment"] == {**AugmentSettings(enabled=True, gain_db=6.0, pitch_semitones=1.0,
                                                 stretch=0.05).to_dict()}
    assert meta["val_clip_stems"] == [held] and meta["prepare"]["steps"] == ["loudness"]
    # the prepared reference: the sample clip after the loudness step, at the reference's loudness
    ref, rate = sf.read(tmp_path / "aug" / "sample_reference.wav", dtype="float32")
    prepared, prepared_rate = sf.read(tmp_path / "aug" / "sample_reference_prepared.wav", dtype="float32")
    assert prepared_rate == rate == 16000 and prepared.shape == ref.shape
    assert (tmp_path / "aug" / "sample_reference_prepared.png").is_file()
    # Only the variants: nothing is encoded again, the originals' training share is gone.
    events = []
    train(config(data, tmp_path / "only", tiny_weights, steps=2, save_every=2, val_clips=1,
                 prepare_loudness=True, augment_stretch=0.05, augment_keep_originals=False),
          events=events.append)
    assert _events("extract_done", events)["audio_encoded"] == 0
    split = find_latest(tmp_path / "only")[1]["split"]
    assert split["val"] == [held] and len(split["train"]) == 6 and all("@aug" in s for s in split["train"])
    # Another seed draws other variants: other cache entries, their latents unlike the first ones.
    events = []
    train(config(data, tmp_path / "seed", tiny_weights, steps=2, save_every=2, val_clips=1,
                 prepare_loudness=True, augment_stretch=0.05, augment_seed=7), events=events.append)
    assert _events("extract_done", events)["audio_encoded"] == 6
    means = [np.load(p)["mean"] for p in sorted((tmp_path / "cache" / "latent").rglob("*.npz"))]
    assert len(means) == 4 + 6 + 6
    assert not any(np.array_equal(a, b) for i, a in enumerate(means) for b in means[i + 1:])


def test_a_plain_run_records_augment_off(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 2)
    events: list[dict] = []
    train(config(data, tmp_path / "plain", tiny_weights, steps=2, save_every=2), events=events.append)
    assert _events("extract_start", events)["variants"] == 0
    meta = json.loads((tmp_path / "plain" / "meta.json").read_text())
    assert meta["augment"] == {"enabled": False}
    assert not (tmp_path / "plain" / "sample_reference_prepared.wav").exists()


def test_dataset_file_augment_problems_are_reported_and_left_out(tmp_path):
    (tmp_path / "dataset.toml").write_text("[augment]\nenabled = true\nstretch = 0.3\nspeed = 2\n")
    settings, problems = read_augment_settings(tmp_path, {"variants": 4})
    assert settings == AugmentSettings(enabled=True, variants=4)
    assert len(problems) == 2
    assert "stretch: out of range (got 0.3, expected 0 to 0.1)" in str(problems[0])
    assert "unknown [augment] key 'speed'" in str(problems[1])


def test_bad_augment_option_is_refused(tmp_path, tiny_weights):
    cfg = TrainConfig(augment_variants=0)
    assert ("augment_variants", "out of range (got 0, expected 1 to 20)") in cfg.problems()
    with pytest.raises(TrainError, match="augment_variants"):
        train(config(tmp_path, tmp_path / "o", tiny_weights, augment_variants=0))


@pytest.mark.slow
def test_an_augmented_run_resumes_with_its_split_and_refuses_once_augment_changed(
        tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 3)
    kw = dict(save_every=2, val_clips=1, augment_enabled=True, augment_variants=1)
    train(config(data, tmp_path / "run", tiny_weights, steps=2, **kw))
    first = find_latest(tmp_path / "run")[1]["split"]
    events: list[dict] = []
    result = train(config(data, tmp_path / "run", tiny_weights, steps=4, resume="latest", **kw),
                   events=events.append)
    assert result.status == "done" and result.step == 4
    assert _events("extract_done", events)["audio_encoded"] == 0  # the variants came from the cache
    assert find_latest(tmp_path / "run")[1]["split"] == first and len(first["train"]) == 4
    events = []
    with pytest.raises(TrainError, match="the dataset changed since this checkpoint"):
        train(config(data, tmp_path / "run", tiny_weights, steps=6, resume="latest",
                     **{**kw, "augment_variants": 2}), events=events.append)
    # a second variant of each training clip: only those two are new to the cache
    assert _events("extract_done", events)["audio_encoded"] == 2
