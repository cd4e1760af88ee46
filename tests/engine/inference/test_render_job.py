"""A render run on the tiny model: one video of a render folder -> .wav, .mp4 (the original
picture, stream copied, with the sound), .png and .render.toml (what was used); the base model or
an adapter; the dataset prompt when none is given; a video outside the folder refused unread."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from selva_engine.inference.render_job import RenderSpec, render_files, run_render
from selva_engine.model.variants import get_variant
from tests.engine.video.node_fixtures import write_video

SECONDS = 2.0  # 50 frames at 25 fps
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A render folder holding one 2 s video with its own 440 Hz tone."""
    path = tmp_path / "renders-in" / "j"
    path.mkdir(parents=True)
    write_video(path / "door.mp4", frames=50, rate=25, audio_rate=16000)
    return path


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path) -> Path:
    """A rank-4 adapter of the tiny model with random (non-zero) B matrices."""
    import torch

    from selva_engine.model.generator import load_generator
    from selva_engine.model.lora import apply_lora, lora_layers, lora_state_dict, save_adapter
    from selva_engine.weights.locate import resolve

    model = load_generator(resolve(tiny_weights, "tiny_16k").generator, get_variant("tiny_16k"))
    apply_lora(model, rank=4)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.add_(0.2 * torch.randn(layer.lora_B.shape, generator=g))
    out = tmp_path_factory.mktemp("adapter") / "adapter_step00004.pt"
    return save_adapter(out, lora_state_dict(model), {"rank": 4, "variant": "tiny_16k", "init_mode": "standard"})


def _spec(folder: Path, weights: Path, **over) -> RenderSpec:
    base = {"video": str(folder / "door.mp4"), "root": str(folder), "name": "door",
            "out_dir": str(folder.parent.parent / "out" / "j" / "renders"), "variant": "tiny_16k",
            "selva_dir": str(weights), "prompt": "a door slams", "steps": 1, "seed": 5, "device": "cpu"}
    return RenderSpec(**{**base, **over})


def _packets(path: Path) -> list[tuple[bytes, int | None, bool]]:
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_files(spec: RenderSpec, files: dict[str, Path]) -> tuple[np.ndarray, dict]:
    """The four files are there and agree with the video; returns (the wave, render.toml)."""
    assert files == render_files(Path(spec.out_dir), "door") and all(p.is_file() for p in files.values())
    assert sorted(p.name for p in Path(spec.out_dir).iterdir()) == [
        "door.mp4", "door.png", "door.render.toml", "door.wav"]  # no temporaries left
    variant = get_variant("tiny_16k")
    wave, sr = sf.read(files["wav"])
    frames = variant.sequence(SECONDS).num_audio_frames  # 2 s in whole latents
    assert sr == variant.audio.sampling_rate == 16000 and wave.shape == (frames,)
    assert abs(frames - SECONDS * sr) < 0.05 * sr and np.isfinite(wave).all() and np.abs(wave).max() > 0
    assert _packets(files["mp4"]) == _packets(Path(spec.video))  # the picture, stream copied
    with av.open(str(files["mp4"])) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].rate == sr
        sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert abs(sound.shape[1] - frames) <= 2048  # AAC padding
    with open(files["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    record = tomllib.loads(files["toml"].read_text())
    assert record["video"] == {"file": spec.video, "sha256": _sha256(Path(spec.video))}
    assert record["files"] == {"wav": "door.wav", "mp4": "door.mp4", "png": "door.png"}
    s = record["sampler"]
    assert (s["variant"], s["seed"], s["steps"], s["cfg"], s["sampling_rate"]) == ("tiny_16k", 5, 1, 4.5, 16000)
    assert s["duration_s"] == SECONDS
    return wave, record


def test_base_model_and_adapter_renders(folder: Path, tiny_weights: Path, adapter: Path) -> None:
    events: list[dict] = []
    base = _spec(folder, tiny_weights)
    wave, record = _check_files(base, run_render(base, events.append))
    assert record["adapter"] == {"file": "", "strength": 1.0} and record["sampler"]["prompt"] == "a door slams"
    assert [e["event"] for e in events] == ["render_start", "render_done"] and events[0]["adapter"] is None

    spec = _spec(folder, tiny_weights, adapter=str(adapter), strength=0.8,
                 used={"job": "j", "run": "20261204-101500-ab12", "step": 4, "reason": None})
    tuned, record = _check_files(spec, run_render(spec))  # the same names: written over
    assert not np.array_equal(tuned, wave)  # same seed, the adapter changes the sound
    assert record["adapter"] == {"file": str(adapter), "strength": 0.8, "sha256": _sha256(adapter),
                                 "job": "j", "run": "20261204-101500-ab12", "step": 4}  # None dropped


def test_an_empty_prompt_is_the_datasets(folder: Path, tiny_weights: Path, make_clips, tmp_path: Path) -> None:
    data = make_clips(tmp_path / "data", 2)  # prompts "tone number 0", "tone number 1"
    events: list[dict] = []
    spec = _spec(folder, tiny_weights, prompt=" ", data_dir=str(data), sample_clip="clip01", duration=1.0)
    files = run_render(spec, events.append)
    assert events[0]["prompt"] == "tone number 1"  # the run's sample clip's
    record = tomllib.loads(files["toml"].read_text())
    assert record["sampler"]["prompt"] == "tone number 1" and record["sampler"]["duration_s"] == 1.0
    assert sf.read(files["wav"])[0].shape == (get_variant("tiny_16k").sequence(1.0).num_audio_frames,)


def test_no_prompt_without_a_dataset_is_a_clear_error(folder: Path, tiny_weights: Path) -> None:
    spec = _spec(folder, tiny_weights, prompt="")
    with pytest.raises(ValueError, match="no prompt for .*door.mp4: write one into prompts.txt"):
        run_render(spec)
    assert not Path(spec.out_dir).exists()


def test_a_video_outside_the_render_folder_is_refused(folder: Path, tiny_weights: Path, tmp_path: Path) -> None:
    from selva_engine.errors import DatasetError

    outside = write_video(tmp_path / "elsewhere.mp4", frames=10)
    spec = _spec(folder, tiny_weights, video=str(outside))
    with pytest.raises(ValueError, match=f"{outside} is not in the render folder {folder}; a render run"):
        run_render(spec)
    (folder / "link.mp4").symlink_to(outside)
    spec = _spec(folder, tiny_weights, video=str(folder / "link.mp4"))
    with pytest.raises(DatasetError, match=f"link.mp4: is a link to {outside}, outside the render folder; it is not read"):
        run_render(spec)
    assert not Path(spec.out_dir).exists()


def test_spec_from_dict_names_unknown_and_missing_keys(folder: Path, tiny_weights: Path) -> None:
    good = json.loads(json.dumps(_spec(folder, tiny_weights).__dict__))
    assert RenderSpec.from_dict(good) == _spec(folder, tiny_weights)
    with pytest.raises(ValueError, match="unknown key.* colour"):
        RenderSpec.from_dict({**good, "colour": 1})
    with pytest.raises(ValueError, match="render spec: .*video"):
        RenderSpec.from_dict({k: v for k, v in good.items() if k != "video"})


def _cli(spec: RenderSpec, path: Path) -> tuple[subprocess.CompletedProcess, list[dict]]:
    path.write_text(json.dumps(spec.__dict__))
    done = subprocess.run([sys.executable, "-m", "selva_engine.cli", "render", "--spec", str(path), "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=120)
    return done, [json.loads(line) for line in done.stdout.splitlines()]


def test_the_cli_renders_a_spec_and_exits_2_for_a_bad_video(folder: Path, tiny_weights: Path,
                                                             tmp_path: Path) -> None:
    outside = write_video(tmp_path / "elsewhere.mp4", frames=10)
    done, events = _cli(_spec(folder, tiny_weights, video=str(outside)), tmp_path / "bad.json")
    assert done.returncode == 2, done.stderr
    (event,) = events
    assert event == {"event": "error", "error": "ValueError", "message": event["message"]}
    assert "elsewhere.mp4 is not in the render folder" in event["message"]
    assert "selva-render: error:" in done.stderr
    spec = _spec(folder, tiny_weights, duration=1.0)
    done, events = _cli(spec, tmp_path / "spec.json")
    assert done.returncode == 0, done.stderr
    assert [e["event"] for e in events] == ["render_start", "render_done", "done"]
    assert events[1]["files"] == {k: str(p) for k, p in render_files(Path(spec.out_dir), "door").items()}
    assert all(Path(p).is_file() for p in events[1]["files"].values())
