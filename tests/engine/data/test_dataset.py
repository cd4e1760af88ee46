"""Dataset loading: pairing, prompts.txt, .npz features, audio, typed errors, collect mode."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from selva_engine.data import dataset as D
from selva_engine.model.variants import get_variant

V16 = get_variant("tiny_16k")
V44 = get_variant("tiny_44k")


def write_npz(path: Path, clip_frames: int = 64, sync_frames: int = 192, **extra) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "clip_features": rng.standard_normal((1, clip_frames, 1024)).astype(np.float32),
        "sync_features": rng.standard_normal((1, sync_frames, 768)).astype(np.float32),
    }
    arrays.update(extra)
    np.savez(path, **arrays)
    return path


def write_wav(path: Path, seconds: float = 8.0, sr: int = 16000, channels: int = 1,
              subtype: str = "PCM_16", fmt: str | None = None) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(path, x.astype(np.float32), sr, subtype=subtype, format=fmt)
    return path


def make_clip(d: Path, stem: str, suffix: str = ".wav", **npz) -> None:
    write_npz(d / f"{stem}.npz", **npz)
    write_wav(d / f"{stem}{suffix}")


# ---------------------------------------------------------------- pairing

def test_pairs_sorted_and_case_insensitive_suffix(tmp_path):
    make_clip(tmp_path, "b")
    make_clip(tmp_path, "a", suffix=".FLAC")
    (tmp_path / "notes.txt").write_text("x")
    pairs, problems = D.find_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["a", "b"]
    assert pairs[0].audio_path.name == "a.FLAC"
    assert problems == []


def test_pairing_problems(tmp_path):
    write_npz(tmp_path / "lonely.npz")
    write_wav(tmp_path / "orphan.wav")
    make_clip(tmp_path, "dup")
    write_wav(tmp_path / "dup.flac")
    pairs, problems = D.find_pairs(tmp_path)
    assert pairs == []
    kinds = {type(p): p for p in problems}
    assert set(kinds) == {D.MissingAudioError, D.OrphanAudioError, D.AmbiguousAudioError}
    amb = str(kinds[D.AmbiguousAudioError])
    assert "dup.flac" in amb and "dup.wav" in amb and "(fix: " in amb
    assert kinds[D.MissingAudioError].path.name == "lonely.npz"


def test_misnamed_audio_is_one_finding_with_did_you_mean(tmp_path):
    write_npz(tmp_path / "dog_bark_01.npz")
    write_wav(tmp_path / "dog_brak_01.wav")
    pairs, problems = D.find_pairs(tmp_path)
    assert pairs == []
    (problem,) = problems
    assert isinstance(problem, D.MissingAudioError) and problem.path.name == "dog_bark_01.npz"
    assert "did you mean dog_brak_01.wav?" in str(problem)
    assert "rename dog_brak_01.wav to dog_bark_01.wav" in str(problem)


def test_empty_and_missing_directory(tmp_path):
    with pytest.raises(D.EmptyDatasetError, match="SelVA Feature Extractor"):
        D.load_dataset(tmp_path, V16)
    with pytest.raises(D.EmptyDatasetError):
        D.load_dataset(tmp_path / "nope", V16)


# ---------------------------------------------------------------- features

@pytest.mark.parametrize("nc,ns", [(10, 50), (64, 192), (96, 288)])
def test_features_padded_or_truncated(tmp_path, nc, ns):
    p = write_npz(tmp_path / "c.npz", nc, ns, prompt=np.array("dog"), duration=np.array(8.0),
                  variant=np.array("small_16k"))
    f = D.load_features(p, V16)
    assert f.clip.shape == (64, 1024) and f.sync.shape == (192, 768)
    assert f.clip.dtype == np.float32
    assert (f.clip_frames, f.sync_frames) == (nc, ns)
    if nc < 64:
        assert np.all(f.clip[nc:] == 0) and np.any(f.clip[nc - 1] != 0)
    raw = np.load(p)["clip_features"][0]
    n = min(nc, 64)
    np.testing.assert_array_equal(f.clip[:n], raw[:n])
    assert (f.npz_prompt, f.duration, f.variant) == ("dog", 8.0, "small_16k")


def test_features_without_batch_dim_and_other_duration(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, clip_features=np.ones((64, 1024), np.float64),
             sync_features=np.ones((192, 768), np.float32))
    f = D.load_features(p, V16, duration=10.0)
    assert f.clip.shape == (80, 1024) and f.sync.shape == (240, 768)
    assert f.npz_prompt is None and f.duration is None


def test_pickled_object_array_refused(tmp_path):
    p = tmp_path / "c.npz"
    obj = np.empty(1, dtype=object)
    obj[0] = {"evil": 1}
    np.savez(p, clip_features=np.ones((1, 64, 1024), np.float32),
             sync_features=np.ones((1, 192, 768), np.float32), prompt=obj)
    with pytest.raises(D.PickledDataError, match="c.npz"):
        D.load_features(p, V16)


def test_plain_pickle_refused(tmp_path):
    p = tmp_path / "c.npz"
    p.write_bytes(pickle.dumps({"clip_features": 1}))
    with pytest.raises(D.PickledDataError):
        D.load_features(p, V16)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"this is not a zip file at all", "not an .npz"),
])
def test_corrupt_npz(tmp_path, content, match):
    p = tmp_path / "c.npz"
    p.write_bytes(content)
    with pytest.raises(D.FeatureFileError, match=match):
        D.load_features(p, V16)


def test_half_written_npz(tmp_path):
    p = write_npz(tmp_path / "c.npz")
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])
    with pytest.raises(D.FeatureFileError, match="corrupt or half-written"):
        D.load_features(p, V16)


def test_npy_instead_of_npz(tmp_path):
    p = tmp_path / "c.npz"
    with open(p, "wb") as f:
        np.save(f, np.ones(3))
    with pytest.raises(D.FeatureFileError, match="single .npy"):
        D.load_features(p, V16)


@pytest.mark.parametrize("arrays,match", [
    ({"clip_features": np.ones((1, 64, 1024), np.float32)}, "missing key.*sync_features"),
    ({"clip_features": np.ones((1, 64, 512), np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32)}, "last dimension 512"),
    ({"clip_features": np.ones((2, 64, 1024), np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32)}, r"shape \(2, 64, 1024\)"),
    ({"clip_features": np.ones((1024,), np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32)}, "expected"),
    ({"clip_features": np.ones((1, 0, 1024), np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32)}, "empty"),
    ({"clip_features": np.full((1, 64, 1024), np.nan, np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32)}, "NaN"),
    ({"clip_features": np.ones((1, 64, 1024), np.float32),
      "sync_features": np.full((1, 192, 768), np.inf, np.float32)}, "NaN/infinite"),
    ({"clip_features": np.ones((1, 64, 1024), np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32), "prompt": np.array(3)}, "prompt"),
    ({"clip_features": np.ones((1, 64, 1024), np.float32),
      "sync_features": np.ones((1, 192, 768), np.float32), "duration": np.array("x")},
     "duration"),
])
def test_bad_feature_arrays(tmp_path, arrays, match):
    p = tmp_path / "c.npz"
    np.savez(p, **arrays)
    with pytest.raises(D.FeatureFileError, match=match) as exc:
        D.load_features(p, V16)
    assert str(exc.value).startswith(str(p)) and "(fix: " in str(exc.value)


# ---------------------------------------------------------------- prompts

def test_prompts_file_and_priority(tmp_path):
    ds = tmp_path / "dog_barks"
    ds.mkdir()
    make_clip(ds, "a", prompt=np.array("npz a"))
    make_clip(ds, "b", prompt=np.array(""))
    make_clip(ds, "c")
    make_clip(ds, "d", prompt=np.array("npz d"))
    (ds / "prompts.txt").write_text(
        "# comment\n\na.npz: from: file a \nno colon here\nb: wrong name\nghost.npz: x\n",
        encoding="utf-8")
    prompts, problems = D.read_prompts(ds)
    assert prompts["a.npz"] == "from: file a"
    assert len(problems) == 3
    msgs = [str(p) for p in problems]
    assert "prompts.txt:4" in msgs[0] and "not 'file.npz: prompt'" in msgs[0]
    assert "'b.npz'" in msgs[1]  # the hint names the right key
    assert "ghost.npz" in msgs[2]
    scan = D.load_dataset(ds, V16)
    got = {c.stem: c.prompt for c in scan.clips}
    assert got == {"a": "from: file a", "b": "", "c": "dog_barks", "d": "npz d"}
    assert len(scan.warnings) == 3 and scan.problems == []


def test_prompts_not_utf8(tmp_path):
    make_clip(tmp_path, "a")
    (tmp_path / "prompts.txt").write_bytes(b"a.npz: caf\xe9\n")
    _, problems = D.read_prompts(tmp_path)
    assert isinstance(problems[0], D.PromptsFileError)
    with pytest.raises(D.PromptsFileError, match="UTF-8"):
        D.load_dataset(tmp_path, V16)


def test_resolve_prompt_rules():
    assert D.resolve_prompt("x.npz", {"x.npz": "p"}, "n", "/d/set") == "p"
    assert D.resolve_prompt("x.npz", {}, "", "/d/set") == ""
    assert D.resolve_prompt("x.npz", {}, None, "/d/set") == "set"


# ---------------------------------------------------------------- audio

@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_audio_bit_depths(tmp_path, subtype):
    p = write_wav(tmp_path / "a.wav", seconds=8.0, subtype=subtype)
    x = D.load_audio(p, 16000, 128000)
    assert x.shape == (128000,) and x.dtype == np.float32
    assert abs(float(np.abs(x).max()) - 0.3) < 1e-3


def test_audio_stereo_mixed_and_resampled(tmp_path):
    p = tmp_path / "a.wav"
    sr = 44100
    t = np.arange(sr * 2) / sr
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)
    sf.write(p, np.stack([left, np.zeros_like(left)], 1), sr, subtype="PCM_24")
    x = D.load_audio(p, 16000, 128000)
    assert x.shape == (128000,)
    assert np.all(x[32000 + 100:] == 0)  # 2 s of audio, then zero padding
    assert 0.24 < float(np.abs(x[1000:30000]).max()) < 0.26  # averaged channels
    spec = np.abs(np.fft.rfft(x[:32000]))
    assert abs(np.argmax(spec) * 16000 / 32000 - 1000) < 2  # still a 1 kHz tone


def test_audio_cut_to_exact_44k_length(tmp_path):
    p = write_wav(tmp_path / "a.flac", seconds=9.0, sr=44100, fmt="FLAC")
    x = D.load_audio(p, 44100, V44.sequence().num_audio_frames)
    assert x.shape == (353280,)


@pytest.mark.parametrize("content,match", [
    (b"", "empty"),
    (b"just some text pretending to be audio", "not a readable audio file"),
])
def test_bad_audio(tmp_path, content, match):
    p = tmp_path / "a.wav"
    p.write_bytes(content)
    with pytest.raises(D.AudioFileError, match=match) as exc:
        D.load_audio(p, 16000, 128000)
    assert "a.wav" in str(exc.value)


def test_header_only_wav_is_empty(tmp_path):
    p = write_wav(tmp_path / "a.wav")
    p.write_bytes(p.read_bytes()[:44])
    with pytest.raises(D.AudioFileError, match="no samples"):
        D.load_audio(p, 16000, 128000)


def test_mp3_accepted_with_warning(tmp_path):
    write_npz(tmp_path / "a.npz")
    write_wav(tmp_path / "a.mp3", fmt="MP3", subtype="MPEG_LAYER_III")
    scan = D.load_dataset(tmp_path, V16)
    assert len(scan.clips) == 1 and "lossy" in scan.warnings[0]
    assert D.load_audio(scan.clips[0].audio_path, 16000, 128000).shape == (128000,)


# ---------------------------------------------------------------- load_dataset

def _messy_dataset(d: Path) -> None:
    make_clip(d, "good1")
    make_clip(d, "good2")
    write_npz(d / "noaudio.npz")
    write_wav(d / "orphan.wav")
    make_clip(d, "badwav")
    (d / "badwav.wav").write_text("not audio")
    (d / "corrupt.npz").write_bytes(b"garbage")
    write_wav(d / "corrupt.wav")


def test_load_dataset_raises_first_problem(tmp_path):
    _messy_dataset(tmp_path)
    with pytest.raises(D.DatasetError):
        D.load_dataset(tmp_path, V16)


def test_load_dataset_collect(tmp_path):
    _messy_dataset(tmp_path)
    scan = D.load_dataset(tmp_path, V16, collect=True)
    assert [c.stem for c in scan.clips] == ["good1", "good2"]
    assert scan.clips[0].clip.shape == (64, 1024) and scan.clips[0].sync.shape == (192, 768)
    types = sorted(type(p).__name__ for p in scan.problems)
    assert types == ["AudioFileError", "FeatureFileError", "MissingAudioError"]
    assert any("orphan.wav" in w for w in scan.warnings)


def test_long_file_reads_only_the_needed_prefix(tmp_path):
    p = tmp_path / "long.wav"
    x = np.random.default_rng(3).standard_normal(44100 * 30).astype(np.float32) * 0.1
    sf.write(p, x, 44100, subtype="FLOAT")
    got = D.load_audio(p, 16000, 128000)
    full = D.fit_length(D.resample(x, 44100, 16000), 128000)
    np.testing.assert_allclose(got, full, atol=1e-6)
    raw = D.read_audio(p, max_seconds=1.0)
    assert raw.data.shape == (44100, 1) and raw.frames == 44100 * 30 and raw.duration == 30.0


def test_prompt_names_follow_the_pairing_case_rule(tmp_path):
    """One case rule: stems exact, suffixes case-insensitive. `k.npz:` names `k.NPZ` and is
    used (not warned about), as `k.WAV` pairs with `k.NPZ`; `K.npz:` names no clip."""
    ds = tmp_path / "case"
    ds.mkdir()
    make_clip(ds, "k")
    make_clip(ds, "m")
    (ds / "k.npz").rename(ds / "k.NPZ")
    (ds / "prompts.txt").write_text("k.npz: a barking dog\nm.NPZ: a cat\nK.npz: other\n")
    prompts, problems = D.read_prompts(ds)
    assert prompts == {"k.NPZ": "a barking dog", "m.npz": "a cat"}
    assert len(problems) == 1 and "'K.npz'" in str(problems[0])
    scan = D.load_dataset(ds, V16)
    assert {c.stem: c.prompt for c in scan.clips} == {"k": "a barking dog", "m": "a cat"}
