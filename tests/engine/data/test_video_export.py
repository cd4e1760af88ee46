"""Export: every clip as the node's `.npz` + `.flac`, read back with ComfyUI-SelVA's trainer rules."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from selva_engine.data.export import export_dataset
from selva_engine.data.extract import FeatureCache
from selva_engine.model.variants import get_variant
from tests.conftest import golden_path
from tests.engine.data.test_video_extract import CountingEncoders
from tests.video_files import make_video

V16 = get_variant("tiny_16k")
TRAINER_AUDIO = (".wav", ".flac", ".mp3", ".ogg", ".aiff", ".aif")


class _Weights:
    selva_dir = Path("/nonexistent")
    video_encoder = text_encoder = None


def trainer_read(folder: Path) -> dict[str, dict]:
    """The LoRA trainer's reading of a data folder (golden/video README section 3, downstream):
    x.npz pairs with x.<audio>, arrays loaded without pickles, features padded/cut to 64 / 192
    rows, audio mixed to mono and cut/padded to 8 s, prompt from the npz (no prompts.txt here)."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if not name.endswith(".npz"):
            continue
        stem = name[:-4]
        audio = [folder / f"{stem}{s}" for s in TRAINER_AUDIO if (folder / f"{stem}{s}").exists()]
        assert len(audio) == 1, f"{name}: the trainer needs exactly one audio file (got {audio})"
        with np.load(folder / name, allow_pickle=False) as z:
            assert set(z.files) == {"clip_features", "sync_features", "duration", "prompt", "variant"}
            clip, sync = z["clip_features"], z["sync_features"]
            assert clip.dtype == sync.dtype == np.float32 and clip.ndim == sync.ndim == 3 and clip.shape[0] == 1
            assert z["duration"].dtype == np.float64 and z["duration"].shape == ()
            assert z["prompt"].dtype.kind == "U" and z["prompt"].shape == () and z["variant"].shape == ()
            prompt = str(z["prompt"])
        wave, rate = sf.read(audio[0], always_2d=True, dtype="float32")
        mono = wave.mean(axis=1)[: 8 * rate]
        fit = lambda a, n: np.pad(a[0][:n], ((0, max(0, n - a.shape[1])), (0, 0)))  # noqa: E731
        out[stem] = {"clip": fit(clip, 64), "sync": fit(sync, 192), "audio": mono, "rate": rate, "prompt": prompt}
    return out


def test_export_trains_in_the_comfyui_reader(tmp_path: Path) -> None:
    ds = tmp_path / "engines"
    ds.mkdir()
    make_video(ds / "idle.mp4", seconds=1.0, audio_rate=16000)
    make_video(ds / "rev.mkv", seconds=1.0)
    t = np.arange(16000) / 16000
    sf.write(ds / "rev.wav", (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    rng = np.random.default_rng(1)
    np.savez(ds / "old.npz", clip_features=rng.standard_normal((1, 16, 1024)).astype(np.float32),
             sync_features=rng.standard_normal((1, 48, 768)).astype(np.float32), duration=np.array(2.0),
             prompt=np.array("old prompt"))
    sf.write(ds / "old.flac", np.zeros(32000, np.float32), 16000)
    (ds / "prompts.txt").write_text("rev.mp4: ignored line\nrev.mkv: an engine revs\nold.npz: an old clip\n")
    out = tmp_path / "for_comfy"
    result = export_dataset(ds, out, V16, weights=_Weights(), cache=FeatureCache(tmp_path / "cache"),
                            encoders_factory=CountingEncoders)
    assert result.problems == [] and len(result.written) == 3
    clips = trainer_read(out)
    assert sorted(clips) == ["idle_001", "old_001", "rev_001"]
    assert clips["rev_001"]["prompt"] == "an engine revs" and clips["old_001"]["prompt"] == "an old clip"
    assert clips["idle_001"]["prompt"] == "engines"
    np.testing.assert_allclose(clips["rev_001"]["audio"], 0.5 * np.sin(2 * np.pi * 300 * t), atol=2 ** -15)
    assert clips["idle_001"]["clip"].shape == (64, 1024) and np.abs(clips["idle_001"]["clip"][8:]).max() == 0
    again = export_dataset(ds, out, V16, weights=_Weights(), cache=FeatureCache(tmp_path / "cache"),
                           encoders_factory=CountingEncoders)
    assert {p.name for p, _ in again.written} == {"idle_002.npz", "old_002.npz", "rev_002.npz"}  # never over


def test_export_layout_matches_the_node_file() -> None:
    node = golden_path() / "video" / "e2e_b" / "e2e_b_001.npz"
    if not node.is_file():
        import pytest

        pytest.skip(f"{node} not found (set SELVA_GOLDEN_DIR)")
    with np.load(node, allow_pickle=False) as z:
        layout = {k: (z[k].dtype.kind, z[k].ndim) for k in z.files}
    assert layout == {"clip_features": ("f", 3), "sync_features": ("f", 3), "duration": ("f", 0),
                      "prompt": ("U", 0), "variant": ("U", 0)}  # what trainer_read asserts of ours
