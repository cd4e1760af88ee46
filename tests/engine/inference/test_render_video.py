"""selva-sample --video: Feature Extractor -> LoRA Loader -> Sampler in one command, on the tiny
model, with videos made here; .wav or the original picture with the generated sound."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from selva_engine.cli import sample_main
from selva_engine.inference.render_video import VideoRequest, video_features
from selva_engine.model.variants import get_variant
from selva_engine.video.cli import main as extract_main
from tests.engine.video.node_fixtures import write_video

SECONDS = 2.0  # 50 frames at 25 fps


@pytest.fixture
def video(tmp_path):
    return write_video(tmp_path / "in.mp4", frames=50, rate=25, audio_rate=16000)


def _args(video, out, weights, *extra):
    return ["--video", str(video), "--prompt", "a dog barking", "--variant", "tiny_16k", "--selva_dir",
            str(weights), "--steps", "1", "--device", "cpu", "--output", str(out), *extra]


def test_wav_has_the_videos_duration_and_equals_extract_then_sample(tmp_path, video, tiny_weights):
    out = tmp_path / "out.wav"
    assert sample_main(_args(video, out, tiny_weights)) == 0
    wave, sr = sf.read(out)
    frames = get_variant("tiny_16k").sequence(SECONDS).num_audio_frames  # 2 s in whole latents
    assert sr == 16000 and wave.shape == (frames,) and abs(frames - SECONDS * sr) < 0.05 * sr
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    # the one command is the two: selva-extract, then selva-sample --npz (its stored prompt)
    assert extract_main(["--video", str(video), "--prompt", "a dog barking", "--output", str(tmp_path / "f"),
                         "--selva_dir", str(tiny_weights), "--device", "cpu"]) == 0
    assert sample_main(["--npz", str(tmp_path / "f" / "in_001.npz"), "--variant", "tiny_16k", "--selva_dir",
                        str(tiny_weights), "--steps", "1", "--device", "cpu", "--output",
                        str(tmp_path / "two.wav")]) == 0
    assert np.array_equal(wave, sf.read(tmp_path / "two.wav")[0])
    # a mask reaches the extractor (features only: the Sampler is the same either way)
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 255  # keep the left half, grey the right
    Image.fromarray(mask).save(tmp_path / "m.png")
    with np.load(tmp_path / "f" / "in_001.npz") as z:
        plain = z["clip_features"]
    masked = video_features(VideoRequest(video, "a dog barking", tmp_path / "m.png", 1.0), tiny_weights,
                            device="cpu")
    assert masked.clip_features.shape == plain.shape and not np.allclose(masked.clip_features, plain)


def _packets(path):
    with av.open(str(path)) as c:
        return [(bytes(p), p.pts, p.is_keyframe) for p in c.demux(c.streams.video[0]) if p.size]


def test_mp4_keeps_the_picture_and_carries_the_generated_sound(tmp_path, video, tiny_weights):
    out = tmp_path / "out.mp4"
    assert sample_main(_args(video, out, tiny_weights)) == 0
    assert _packets(out) == _packets(video)  # stream copied, never re-encoded
    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
        sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
        rate = c.streams.audio[0].rate
    frames = get_variant("tiny_16k").sequence(SECONDS).num_audio_frames
    assert rate == 16000 and sound.shape[0] == 1 and abs(sound.shape[1] - frames) <= 2048  # AAC padding
    with av.open(str(video)) as c:  # the source's own 440 Hz tone is gone
        tone = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    assert not np.allclose(sound[:, :1000], tone[:, :1000], atol=1e-2)


@pytest.mark.parametrize("problem", ["text", "suffix", "prompt", "npz_mp4", "encoders"])
def test_bad_input_is_one_sentence_and_exit_2(tmp_path, video, tiny_weights, capsys, problem):
    out = tmp_path / "out.mp4"
    if problem == "text":
        video = tmp_path / "notes.mp4"
        video.write_text("not a video\n" * 50)
    args = _args(video, out, tiny_weights)
    if problem == "suffix":
        args[-1] = str(tmp_path / "out.ogg")
    elif problem == "prompt":
        args = args[:2] + args[4:]
    elif problem == "npz_mp4":
        args[0] = "--npz"
    elif problem == "encoders":
        weights = tmp_path / "no-video-encoders"
        weights.mkdir()
        for entry in tiny_weights.iterdir():
            if entry.name != "video_enc_sup_5.pth":
                (weights / entry.name).symlink_to(entry)
        args[args.index("--selva_dir") + 1] = str(weights)
    assert sample_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selva-sample: error: "), err
    want = {"text": "notes.mp4: is not a video", "suffix": "out.ogg: selva-sample cannot write a '.ogg'",
            "prompt": "--video needs --prompt", "npz_mp4": "out.mp4: a video output needs --video",
            "encoders": "video_enc_sup_5.pth"}[problem]
    assert want in err[0] and not out.exists()
