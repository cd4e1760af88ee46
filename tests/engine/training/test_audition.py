"""Audition videos on the tiny variant: every checkpoint renders each one (.wav, .png, .mp4 with
the picture stream-copied), the training is the same without them, bad ones are warnings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from selva_engine.evaluation.metrics import compute_metrics
from selva_engine.training.audition import (
    AuditionVideo,
    find_audition_videos,
    read_audition_metrics,
)
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import train
from tests.video_files import make_video

STEPS = dict(steps=4, save_every=2, log_every=1)


def config(data: Path, out: Path, weights: Path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), output_dir=str(out), variant="tiny_16k", selva_dir=str(weights),
                batch_size=2, lr=1e-3, warmup_steps=1, sample_steps=2, precision="fp32", device="cpu",
                cache_dir=str(out.parent / "cache"), **STEPS)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_clips):
    data = make_clips(tmp_path_factory.mktemp("data"), 4)
    (data / "audition").mkdir()
    make_video(data / "audition" / "street.mp4", seconds=2.0, fps=25, audio_rate=16000)
    make_video(data / "audition" / "kitchen.mp4", seconds=1.6, fps=25, tone=880.0)
    return data


def _packets(path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


def _sound(path):
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        return np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1), stream.rate, \
            float(stream.duration * stream.time_base)


@pytest.fixture(scope="module")
def audition_run(tmp_path_factory, dataset, tiny_weights):
    """A 4-step run with checkpoints at steps 2 and 4 on the dataset with two audition videos."""
    out = tmp_path_factory.mktemp("with") / "run"
    events: list[dict] = []
    return train(config(dataset, out, tiny_weights), events=events.append), events


def test_every_checkpoint_auditions_every_video(audition_run, dataset):
    result, events = audition_run
    folder = result.output_dir / "audition"
    for video, seconds in (("street", 2.0), ("kitchen", 1.6)):
        for step in (2, 4):
            stem = folder / f"{video}_step{step:05d}"
            wave, rate = sf.read(stem.with_suffix(".wav"))
            assert rate == 16000 and wave.shape == (int(seconds * rate),) and np.abs(wave).max() > 0
            assert stem.with_suffix(".png").stat().st_size > 0
            mp4 = stem.with_suffix(".mp4")
            assert _packets(mp4) == _packets(dataset / "audition" / f"{video}.mp4")  # stream copy
            sound, sound_rate, duration = _sound(mp4)
            assert sound_rate == 16000 and abs(sound.shape[1] - wave.shape[0]) <= 2048  # AAC padding
            assert abs(duration - seconds) < 0.15
    checkpoints = [e for e in events if e["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [2, 4] and all(c["audition_s"] > 0 for c in checkpoints)
    assert [len(e["files"]) for e in events if e["event"] == "audition"] == [6, 6]
    # fixed noise per video: the same video, a different adapter -> a different sound
    assert not np.array_equal(sf.read(folder / "street_step00002.wav")[0],
                              sf.read(folder / "street_step00004.wav")[0])
    assert not any(c.stem in ("street", "kitchen") for c in result.output_dir.glob("*.wav"))


def test_audition_metrics_are_recorded_and_weighed_by_the_recommendation(audition_run):
    result, events = audition_run
    meta = json.loads((result.output_dir / "meta.json").read_text())
    renders = meta["audition_metrics"]
    assert sorted(renders) == ["2", "4"] and all(sorted(v) == ["kitchen", "street"] for v in renders.values())
    # the metrics are those of the .wav files on disk (what read_audition_metrics measures again)
    folder = result.output_dir / "audition"
    wave, rate = sf.read(folder / "street_step00004.wav", dtype="float32")
    assert renders["4"]["street"] == pytest.approx(compute_metrics(wave, rate).to_dict(), rel=2e-3)  # 16-bit file
    again = read_audition_metrics(result.output_dir, ["street", "kitchen", "gone"], 4)
    assert sorted(again) == ["kitchen", "street"]  # a video without a file is left out
    for video in again:
        assert again[video] == pytest.approx(renders["4"][video], rel=2e-3)
    assert [e["metrics"].keys() for e in events if e["event"] == "audition"][0] == {"street", "kitchen"}
    used = meta["recommendation"]["used"]
    assert used[-1] == "hf energy ratio of the audition renders (kitchen, street)", used


@pytest.mark.slow
def test_training_is_the_same_without_auditions(tmp_path, audition_run, dataset, tiny_weights):
    plain_data = tmp_path / "plain_data"
    plain_data.mkdir()
    for clip in dataset.iterdir():
        if clip.is_file():
            shutil.copy(clip, plain_data / clip.name)
    without = train(config(plain_data, tmp_path / "plain", tiny_weights))
    assert not (tmp_path / "plain" / "audition").exists()
    with_auditions = audition_run[0]
    assert with_auditions.history["loss"] == without.history["loss"]
    assert with_auditions.history["train_fixed_loss"] == without.history["train_fixed_loss"]
    assert with_auditions.history["grad_norm"] == without.history["grad_norm"]


def test_named_videos_and_bad_ones_are_warnings(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 3)
    (data / "audition").mkdir()
    (data / "audition" / "broken.mp4").write_text("not a video\n")
    (data / "more").mkdir()
    make_video(data / "more" / "named.mp4", seconds=1.0, fps=25)
    events: list[dict] = []
    cfg = config(data, tmp_path / "run", tiny_weights, steps=2, save_every=2,
                 sample_videos=("more/named.mp4", "more/missing.mp4"))
    result = train(cfg, events=events.append)
    assert result.status == "done"
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert any("broken.mp4" in w and w.startswith("skipping audition video") for w in warnings)
    assert any("missing.mp4" in w and "fix the path" in w for w in warnings)
    assert sorted(p.name for p in (tmp_path / "run" / "audition").iterdir()) == [
        "named_step00002.mp4", "named_step00002.png", "named_step00002.wav"]


def test_audition_videos_are_found_in_order_and_seeded_by_name(tmp_path):
    (tmp_path / "audition").mkdir()
    for name in ("b.mp4", "a.MOV", "a.mask.png", ".hidden.mp4", "notes.txt"):
        (tmp_path / "audition" / name).write_bytes(b"x")
    (tmp_path / "x.mp4").write_bytes(b"x")
    found, warnings = find_audition_videos(tmp_path, ["x.mp4", "audition/b.mp4", "../outside.mp4"])
    assert [p.name for p in found] == ["a.MOV", "b.mp4", "x.mp4"]
    assert len(warnings) == 1 and "outside.mp4" in warnings[0]
    one = AuditionVideo("street", Path("s.mp4"), 1.0, None, None)  # type: ignore[arg-type]
    assert one.noise_seed(42) == one.noise_seed(42) != one.noise_seed(43)
    assert TrainConfig(sample_videos=("../x.mp4", "/abs.mp4", "ok/v.mp4")).problems() == [
        ("sample_videos", "got '../x.mp4', expected a path relative to the dataset, inside it"),
        ("sample_videos", "got '/abs.mp4', expected a path relative to the dataset, inside it")]


def test_a_checkpoints_auditions_are_one_batch_and_sound_as_each_alone(tiny_weights):
    """Auditions.render samples a training batch's worth of videos at once (one Euler pass and
    decode); each video's sound is what it is sampled alone, from the same fixed noise."""
    from types import SimpleNamespace

    import torch

    from selva_engine.audio.codec import load_audio_codec
    from selva_engine.model.generator import load_generator
    from selva_engine.model.variants import get_variant
    from selva_engine.training.audition import Auditions
    from selva_engine.weights.locate import resolve

    v, weights = get_variant("tiny_16k"), resolve(tiny_weights, "tiny_16k")
    model, codec = load_generator(weights.generator, v), load_audio_codec(v, weights, need_encoder=False)
    s, g = v.sequence(), torch.Generator().manual_seed(5)
    videos = [AuditionVideo(name, Path(f"{name}.mp4"), 1.0, torch.randn(1, s.clip_seq_len, v.clip_dim, generator=g),
                            torch.randn(1, s.sync_seq_len, v.sync_dim, generator=g)) for name in ("a", "b", "c")]
    text = torch.randn(1, 77, model.empty_string_feat.shape[-1], generator=g)

    def sample(batch_size, chosen):
        cfg = SimpleNamespace(seed=0, batch_size=batch_size, sample_cfg=4.5, sample_steps=2)
        ctx = SimpleNamespace(cfg=cfg, variant=v, device=torch.device("cpu"))
        calls = []
        real = codec.decode
        codec.decode = lambda lat: calls.append(lat.shape[0]) or real(lat)
        try:
            return Auditions(ctx, chosen, text)._sample(model, codec, torch.autocast("cpu", enabled=False),
                                                        None, chosen), calls
        finally:
            codec.decode = real

    together, calls = sample(3, videos)
    assert calls == [3]  # one decode for the three
    for video, wave in zip(videos, together, strict=True):
        alone, _ = sample(1, [video])
        np.testing.assert_allclose(wave, alone[0], rtol=1e-3, atol=1e-4)
    assert not np.allclose(together[0], together[1], atol=1e-3)
