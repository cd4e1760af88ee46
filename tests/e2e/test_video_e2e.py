"""The real daemon on a dataset of videos: extraction on the slot, training to `done`, bad videos
reported one by one while the daemon goes on, then `selvad export` read with the trainer's rules."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.e2e.conftest import DaemonTree
from tests.video_files import make_video

pytestmark = pytest.mark.slow


def _need_video_encoders(weights: Path) -> None:
    from selva_engine.weights.locate import resolve

    try:
        import selva_engine.video.encoders  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"the video encoders are not in this tree yet ({exc})")
    if resolve(weights, "tiny_16k").video_encoder is None:
        pytest.skip(f"make_tiny wrote no tiny video encoders into {weights}")


def _wav(path: Path, seconds: float, freq: float) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000)


def _good(ds: Path) -> None:
    ds.mkdir(parents=True)
    make_video(ds / "clean.mp4", seconds=2.0, fps=8)
    _wav(ds / "clean.wav", 2.0, 330.0)
    make_video(ds / "own.MOV", seconds=2.0, fps=8, audio_rate=16000, video_offset=0.5)
    make_video(ds / "masked.mkv", seconds=1.5, fps=8)
    _wav(ds / "masked.flac", 1.5, 550.0)
    from PIL import Image

    mask = np.zeros((48, 64), np.uint8)
    mask[8:40, 16:48] = 255
    Image.fromarray(mask).save(ds / "masked.mask.png")
    make_video(ds / "long.mp4", seconds=10.0, fps=4, width=32, height=32, audio_rate=16000)
    (ds / "dataset.toml").write_text("[video]\nsplit = true\nmask_strength = 0.5\n")
    (ds / "prompts.txt").write_text("clean.mp4: a clean tone\nlong.mp4: a long drone\n")


def _bad(ds: Path, tmp: Path) -> None:
    ds.mkdir(parents=True)
    (ds / "notes.mp4").write_text("a text file named like a video\n" * 10)
    _wav(ds / "notes.wav", 1.0, 200.0)
    make_video(ds / "mute.mp4", seconds=1.0)
    raw = bytearray(make_video(tmp / "src.mp4", seconds=1.0).read_bytes())
    (ds / "cut.mp4").write_bytes(bytes(raw[: len(raw) // 3]))
    _wav(ds / "cut.wav", 1.0, 200.0)
    huge = bytearray(raw)
    i = huge.find(b"avc1")
    struct.pack_into(">HH", huge, i + 28, 9000, 9000)  # the sample entry claims 9000x9000
    (ds / "huge.mp4").write_bytes(bytes(huge))


def test_bad_videos_each_reported_while_another_dataset_trains(make_tree, tmp_path: Path) -> None:
    """Every bad video is one error of its dataset's report; the daemon goes on and trains
    another dataset to done meanwhile."""
    tree: DaemonTree = make_tree(settle=0.5)
    _bad(tree.dataset("broken"), tmp_path)
    tree.add_clips("birds", 2)
    tree.write_job("broken", "broken", steps=4, save_every=2)
    tree.write_job("birds", "birds", steps=2, save_every=2)
    tree.start()
    invalid = tree.wait_for(lambda: [e for e in tree.events("dataset.invalid") if e["dataset"] == "broken"],
                            60, "the broken dataset's report")
    errors = invalid[0]["errors"]
    for name in ("notes.mp4", "mute.mp4", "cut.mp4", "huge.mp4"):
        assert sum(name in e for e in errors) == 1, errors
    assert all("fix:" in e or "→" in e or "(fix" in e for e in errors), errors
    run = tree.wait_for(lambda: [r for r in tree.runs(job="birds") if r.kind == "train"], 60, "the birds run")[0]
    assert tree.wait_state(run.id, ("training", "done"), 120)  # the daemon went on to train it
    assert tree.runs(job="broken") == [] and tree.proc is not None and tree.proc.poll() is None


def test_video_dataset_trains_to_done(make_tree, tiny_weights: Path, tmp_path: Path) -> None:
    _need_video_encoders(tiny_weights)
    tree: DaemonTree = make_tree(settle=0.5)
    _good(tree.dataset("engines"))
    tree.write_job("engines", "engines", steps=4, save_every=2)
    tree.start()
    run = tree.wait_for(lambda: [r for r in tree.runs(job="engines") if r.kind == "train"], 120,
                        "the engines training run")[0]
    done = tree.wait_state(run.id, ("done", "failed"), 600)
    assert done.state == "done", done.error
    assert tree.proc is not None and tree.proc.poll() is None
    extracted = tree.events("run.video_extract_done")
    assert extracted and sum(e["videos_encoded"] for e in extracted) == 5, extracted  # 3 videos + 2 parts of long
    assert all(e.get("videos_failed", 0) == 0 for e in extracted)
    out = tmp_path / "for_comfy"
    res = tree.cli("export", "engines", str(out), "--variant", "tiny_16k", timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    from tests.engine.data.test_video_export import trainer_read

    clips = trainer_read(out)
    assert sorted(clips) == ["clean_001", "long_part01_001", "long_part02_001", "masked_001", "own_001"]
    assert clips["long_part02_001"]["prompt"] == "a long drone"
