"""Video clips through the cache: encoded once, re-extracted only when what they depend on changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from selva_engine.data import dataset as D
from selva_engine.data.extract import FeatureCache
from selva_engine.data.video_extract import audio_window, extract_video_clips
from selva_engine.model.variants import get_variant
from tests.video_files import make_video

V16 = get_variant("tiny_16k")


class CountingEncoders:
    """Stand-in VideoEncoders with the contract's shapes; features depend on the pixels and the prompt."""

    identity = "counting"
    loads = 0

    def __init__(self) -> None:
        CountingEncoders.loads += 1
        self.clip_calls = self.sync_calls = 0
        g = torch.Generator().manual_seed(0)
        self.pc = torch.randn(3, 1024, generator=g)
        self.ps = torch.randn(3, 768, generator=g)

    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor:
        self.clip_calls += 1
        f = frames.mean(dim=(-1, -2)) @ self.pc  # (B, N, 1024)
        return torch.nn.functional.normalize(f, dim=-1)

    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.tensor([[float(len(p)), float(sum(map(ord, p)) % 97)] for p in prompts])
        return t[:, None, :].expand(-1, 6, -1).contiguous(), torch.ones(len(prompts), 6, dtype=torch.bool)

    def encode_sync(self, frames, text_f, text_mask, *, segment_batch=None) -> torch.Tensor:
        self.sync_calls += 1
        segs = (frames.shape[1] - 16) // 8 + 1
        rows = frames.mean(dim=(-1, -2))[:, : 8 * segs] @ self.ps  # (B, 8S, 768)
        return rows + text_f[:, :1, :1]

    def free(self) -> None:
        pass


def _dataset(tmp_path: Path) -> Path:
    ds = tmp_path / "engines"
    ds.mkdir()
    make_video(ds / "a.mp4", seconds=1.0, fps=10)
    sf.write(ds / "a.wav", np.zeros(16000, np.float32), 16000)
    make_video(ds / "b.mkv", seconds=1.0, fps=10, audio_rate=16000, video_offset=0.5)
    return ds


def _run(ds: Path, cache: FeatureCache, **kw):
    scan = D.load_dataset(ds, V16, collect=True, **kw)
    return extract_video_clips(scan.videos, V16, cache=cache, identity="id", encoders_factory=CountingEncoders)


def test_encoded_once_then_cached(tmp_path: Path) -> None:
    ds, cache = _dataset(tmp_path), FeatureCache(tmp_path / "cache")
    CountingEncoders.loads = 0
    clips, problems, stats = _run(ds, cache)
    assert problems == [] and stats.videos_encoded == 2 and CountingEncoders.loads == 1
    by = {c.stem: c for c in clips}
    assert by["a"].clip.shape == (64, 1024) and by["a"].sync.shape == (192, 768)
    assert np.abs(by["a"].clip[:8]).sum() > 0 and np.abs(by["a"].clip[8:]).sum() == 0  # 1 s -> 8 CLIP rows
    assert by["a"].audio_path == ds / "a.wav"  # the clean recording itself
    assert by["b"].audio_path.is_relative_to(cache.root)  # the own track's aligned window, cached
    clips2, _, stats2 = _run(ds, cache)
    assert stats2.videos_encoded == 0 and stats2.videos_cached == 2 and CountingEncoders.loads == 1
    np.testing.assert_array_equal(clips2[0].clip, clips[0].clip)


def test_editing_a_prompt_reextracts_that_clip_only(tmp_path: Path) -> None:
    ds, cache = _dataset(tmp_path), FeatureCache(tmp_path / "cache")
    _run(ds, cache)
    (ds / "prompts.txt").write_text("b.mkv: an engine idles\n")
    clips, _, stats = _run(ds, cache)
    assert (stats.videos_encoded, stats.videos_cached) == (1, 1)
    assert {c.stem: c.prompt for c in clips}["b"] == "an engine idles"
    (ds / "dataset.toml").write_text("[video]\nsplit = true\n")  # both shorter than 8 s: same windows
    assert _run(ds, cache)[2].videos_encoded == 0


def test_mask_changes_the_features(tmp_path: Path) -> None:
    ds, cache = _dataset(tmp_path), FeatureCache(tmp_path / "cache")
    plain = {c.stem: c for c in _run(ds, cache)[0]}
    from PIL import Image

    m = np.zeros((48, 64), np.uint8)
    m[10:30, 10:40] = 255
    Image.fromarray(m).save(ds / "a.mask.png")
    masked, _, stats = _run(ds, cache)
    assert stats.videos_encoded == 1
    assert not np.allclose({c.stem: c for c in masked}["a"].clip, plain["a"].clip)


def test_own_track_window_aligned(tmp_path: Path) -> None:
    ds = _dataset(tmp_path)
    clip = next(c for c in D.load_dataset(ds, V16, collect=True).videos if c.stem == "b")
    samples, rate = audio_window(clip)
    assert rate == 16000 and samples.shape == (1, 16000)
    wave, _ = sf.read(_run(ds, FeatureCache(tmp_path / "c"))[0][1].audio_path, always_2d=True)
    np.testing.assert_allclose(wave.T, samples, atol=1e-7)


def test_split_windows_each_their_audio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = tmp_path / "rain"
    ds.mkdir()
    make_video(ds / "long.mp4", seconds=17.0, fps=4, width=32, height=32)
    rate = 16000
    ramp = (np.arange(17 * rate) / (17 * rate)).astype(np.float32)
    sf.write(ds / "long.wav", ramp, rate, subtype="FLOAT")
    import selva_engine.data.video_extract as VX

    read: list[Path] = []
    real = VX.hash_file
    monkeypatch.setattr(VX, "hash_file", lambda p: read.append(Path(p)) or real(p))
    clips, problems, stats = _run(ds, FeatureCache(tmp_path / "cache"), video={"split": True})
    assert read.count(ds / "long.mp4") == 1  # three windows, the video read once
    assert problems == [] and [c.stem for c in clips] == ["long_part01", "long_part02", "long_part03"]
    second, _ = sf.read(clips[1].audio_path)
    assert second[0] == pytest.approx(ramp[8 * rate], abs=1e-6) and len(second) == 8 * rate
