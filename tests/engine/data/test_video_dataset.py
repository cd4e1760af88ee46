"""Videos in a dataset: pairing, prompts, masks, dataset.toml [video], windows, bad videos."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from selva_engine.data import dataset as D
from selva_engine.data.videos import is_mask_name, is_video_name, plan_windows
from selva_engine.model.variants import get_variant
from tests.video_files import make_video

V16 = get_variant("tiny_16k")


def wav(path: Path, seconds: float = 2.0, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(path, (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr)
    return path


def by_stem(scan: D.DatasetScan) -> dict[str, D.VideoClip]:
    return {c.stem: c for c in scan.videos}


def test_names() -> None:
    assert is_video_name("a.MP4") and is_video_name("b.webm") and is_video_name("c.Avi")
    assert not is_video_name("a.mask.mp4") and not is_video_name(".hidden.mp4") and not is_video_name("a.wav")
    assert is_mask_name("a.mask.png") and is_mask_name("a.MASK.mp4")


def test_windows() -> None:
    assert plan_windows(3.0, False) == [(0.0, 3.0)]
    assert plan_windows(20.0, False) == [(0.0, 8.0)]
    assert plan_windows(20.0, True) == [(0.0, 8.0), (8.0, 8.0), (16.0, 4.0)]
    assert plan_windows(16.5, True) == [(0.0, 8.0), (8.0, 8.0)]  # a 0.5 s tail is dropped


def test_pairing_prompts_and_masks(tmp_path: Path) -> None:
    ds = tmp_path / "dog barks"
    ds.mkdir()
    make_video(ds / "clean.mp4", seconds=1.0)
    wav(ds / "clean.WAV")
    make_video(ds / "own.MOV", seconds=1.0, audio_rate=16000)
    make_video(ds / "masked.mkv", seconds=1.0)
    wav(ds / "masked.flac")
    make_video(ds / "masked.mask.mp4", seconds=1.0)
    (ds / "prompts.txt").write_text("clean.mp4: a dog barks twice\nmasked.npz: a masked dog\n")
    (ds / "dataset.toml").write_text("[video]\nmask_strength = 0.5\nmask_sync = false\n")
    scan = D.load_dataset(ds, V16, collect=True)
    assert scan.problems == [] and scan.clips == []
    clips = by_stem(scan)
    assert sorted(clips) == ["clean", "masked", "own"]
    assert clips["clean"].audio_path == ds / "clean.WAV" and clips["clean"].prompt == "a dog barks twice"
    assert clips["own"].audio_path is None and clips["own"].prompt == "dog barks"
    assert clips["masked"].mask_path == ds / "masked.mask.mp4" and clips["masked"].prompt == "a masked dog"
    assert (clips["masked"].mask_strength, clips["masked"].mask_clip, clips["masked"].mask_sync) == (0.5, True, False)
    assert any("own.MOV" in w and "clean isolated recordings" in w for w in scan.warnings)
    assert not any("orphan" in w or "no .npz" in w for w in scan.warnings), scan.warnings


def test_long_video_first_8s_or_split(tmp_path: Path) -> None:
    ds = tmp_path / "rain"
    ds.mkdir()
    make_video(ds / "long.mp4", seconds=18.0, fps=4, width=32, height=32)
    wav(ds / "long.wav", seconds=18.0)
    scan = D.load_dataset(ds, V16, collect=True)
    assert [(c.stem, c.start, c.duration) for c in scan.videos] == [("long", 0.0, 8.0)]
    assert any("split = true" in w for w in scan.warnings)
    (ds / "prompts.txt").write_text("long.mp4: rain\nlong_part02.npz: heavier rain\n")
    scan = D.load_dataset(ds, V16, collect=True, video={"split": True})
    got = [(c.stem, c.start, c.duration, c.prompt) for c in scan.videos]
    assert got == [("long_part01", 0.0, 8.0, "rain"), ("long_part02", 8.0, 8.0, "heavier rain"),
                   ("long_part03", 16.0, 2.0, "rain")]


def test_video_without_any_audio_is_an_error(tmp_path: Path) -> None:
    ds = tmp_path / "d"
    ds.mkdir()
    make_video(ds / "mute.mp4")
    with pytest.raises(D.DatasetError, match=r"mute\.mp4: has no audio track.*mute\.wav"):
        D.load_dataset(ds, V16)


def test_npz_beside_video_wins(tmp_path: Path) -> None:
    ds = tmp_path / "d"
    ds.mkdir()
    make_video(ds / "a.mp4")
    wav(ds / "a.wav")
    np.savez(ds / "a.npz", clip_features=np.zeros((1, 8, 1024), np.float32),
             sync_features=np.zeros((1, 24, 768), np.float32))
    scan = D.load_dataset(ds, V16, collect=True)
    assert [c.stem for c in scan.clips] == ["a"] and scan.videos == []
    assert any("a.npz holds this clip's features" in w for w in scan.warnings)


def test_bad_videos_each_one_problem_others_go_on(tmp_path: Path) -> None:
    ds = tmp_path / "d"
    ds.mkdir()
    make_video(ds / "good.mp4", audio_rate=16000)
    (ds / "text.mp4").write_text("hello\n" * 50)
    wav(ds / "text.wav")
    outside = make_video(tmp_path / "elsewhere.mp4", audio_rate=16000)
    os.symlink(outside, ds / "link.mp4")
    make_video(ds / "twice.mp4", audio_rate=16000)
    make_video(ds / "twice.mkv", audio_rate=16000)
    (ds / "dataset.toml").write_text("[video]\nsplit = 'yes'\nmask_strength = 3\nsplitt = true\n")
    scan = D.load_dataset(ds, V16, collect=True)
    assert [c.stem for c in scan.videos] == ["good"]
    text = [str(p) for p in scan.problems]
    assert any("text.mp4: is not a video file" in t for t in text)
    assert any("link.mp4" in t and "outside the dataset" in t for t in text)
    assert any("several videos for one clip" in t for t in text)
    assert sum("dataset.toml" in t for t in text) == 3
    assert all("(fix: " in t for t in text)


def test_empty_dataset_names_videos(tmp_path: Path) -> None:
    with pytest.raises(D.EmptyDatasetError, match="videos"):
        D.load_dataset(tmp_path, V16)
