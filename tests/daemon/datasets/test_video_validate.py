"""Validation of video datasets: every bad video one finding with its fix, good ones listed as clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from selvad.datasets import validate as V
from selvad.datasets.manifest import dataset_manifest
from selvad.datasets.report import load_last_report, save_last_report
from tests.video_files import make_video


def _wav(path: Path, seconds: float = 1.0) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)


def test_video_dataset_report(tmp_path: Path) -> None:
    ds = tmp_path / "cars"
    ds.mkdir()
    make_video(ds / "clean.mp4")
    _wav(ds / "clean.wav")
    make_video(ds / "own.mkv", audio_rate=16000)
    make_video(ds / "long.mp4", seconds=17.0, fps=2, width=32, height=32)
    _wav(ds / "long.wav", 17.0)
    (ds / "dataset.toml").write_text("[video]\nsplit = true\n")
    (ds / "notes.mp4").write_text("not a video")
    make_video(ds / "mute.mov")
    outside = make_video(tmp_path / "x.mp4", audio_rate=16000)
    os.symlink(outside, ds / "away.mp4")
    r = V.validate_dataset(ds, "tiny_16k")
    errors = {(f.file, f.code) for f in r.errors}
    assert ("notes.mp4", "bad-video") in errors and ("mute.mov", "bad-video") in errors
    assert ("away.mp4", "outside-dataset") in errors
    assert all(f.fix for f in r.errors)
    assert {c.stem for c in r.clips} == {"clean", "own", "long_part01", "long_part02", "long_part03"}
    assert {c.stem: c.video for c in r.clips}["long_part02"] == "long.mp4, 8-16 s"
    assert any(f.file == "own.mkv" and f.code == "video-own-audio" for f in r.warnings)
    data = r.to_dict()
    assert data["video_clip_count"] == 5 and len(data["video_clips"]) == 5
    save_last_report(r, tmp_path / "state", str(ds))
    assert load_last_report(tmp_path / "state", str(ds))["video_clip_count"] == 5
    names = [f["name"] for f in dataset_manifest(ds)["files"]]
    assert {"clean.mp4", "own.mkv", "long.mp4", "dataset.toml", "notes.mp4"} <= set(names)


def test_only_bad_videos_is_not_empty_but_errors(tmp_path: Path) -> None:
    (tmp_path / "a.mp4").write_bytes(b"\x00" * 100)
    r = V.validate_dataset(tmp_path, "tiny_16k")
    assert not r.ok and [f.code for f in r.errors] == ["bad-video"]


def test_job_video_section_sets_the_run_and_beats_dataset_toml(tmp_path: Path) -> None:
    from selva_engine.data.dataset import load_dataset
    from selva_engine.model.variants import get_variant
    from selva_engine.training.options import TrainConfig
    from selvad.config.schema import Problems
    from selvad.config.settings import read_settings

    p = Problems("job.toml")
    got = read_settings({"video": {"split": True, "mask_strength": 0.25, "mask_sync": "auto"}}, p, "")
    assert p.items == []
    cfg = TrainConfig(**{k: v for k, (v, _) in got.items()})
    assert cfg.video_settings == {"split": True, "mask_strength": 0.25}
    bad = Problems("job.toml")
    read_settings({"video": {"split": "yes"}}, bad, "")
    assert bad.items and "video.split" in bad.items[0]
    assert ("video_mask_strength", "got 2.0, expected 0..1") in TrainConfig(video_mask_strength=2.0).problems()
    ds = tmp_path / "d"
    ds.mkdir()
    make_video(ds / "long.mp4", seconds=17.0, fps=2, width=32, height=32, audio_rate=8000)
    (ds / "dataset.toml").write_text("[video]\nsplit = false\n")
    scan = load_dataset(ds, get_variant("tiny_16k"), collect=True, video=cfg.video_settings)
    assert [c.stem for c in scan.videos] == ["long_part01", "long_part02", "long_part03"]


def test_audition_videos_are_no_clips_and_a_bad_one_is_a_warning(tmp_path: Path) -> None:
    ds = tmp_path / "cars"
    ds.mkdir()
    make_video(ds / "clean.mp4")
    _wav(ds / "clean.wav")
    (ds / "audition").mkdir()
    make_video(ds / "audition" / "street.mp4")
    make_video(ds / "audition" / "kitchen.mov", audio_rate=16000)
    (ds / "audition" / "broken.mp4").write_text("not a video")
    r = V.validate_dataset(ds, "tiny_16k")
    assert r.ok and [c.stem for c in r.clips] == ["clean"]
    assert [(f.file, f.code) for f in r.warnings if f.code == "bad-audition-video"] == [
        ("audition/broken.mp4", "bad-audition-video")]
    bad = next(f for f in r.warnings if f.code == "bad-audition-video")
    assert bad.fix and "left out" in bad.message
    assert all("audition" not in name for name in dataset_manifest(ds)["files"])
