"""selva-eval --videos: every evaluated adapter renders each video of a folder (.wav, .png, .mp4
with the picture stream-copied), from the same noise per video, on the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from selva_engine.evaluation.evaluate import main as eval_main
from selva_engine.evaluation.videos import list_videos
from selva_engine.model.variants import get_variant
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import train
from tests.video_files import make_video

VIDEOS = {"kitchen": 0.8, "street": 1.2}  # name -> seconds (25 fps)


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_clips, tiny_weights):
    """A 2-step run (checkpoints at steps 1 and 2, and the final adapter) and a folder of videos:
    two good ones, one that is no video, and files that are not videos at all."""
    root = tmp_path_factory.mktemp("evalvideos")
    data = make_clips(root / "data", 2)
    train(TrainConfig(data_dir=str(data), output_dir=str(root / "run"), variant="tiny_16k",
                      selva_dir=str(tiny_weights), steps=2, save_every=1, log_every=1, batch_size=2, lr=5e-3,
                      warmup_steps=0, sample_steps=1, precision="fp32", device="cpu"))
    videos = root / "videos"
    videos.mkdir()
    for name, seconds in VIDEOS.items():
        make_video(videos / f"{name}.mp4", seconds=seconds, fps=25, audio_rate=16000 if name == "street" else 0)
    (videos / "notes.mp4").write_text("not a video\n" * 50)
    (videos / "readme.txt").write_text("hello")
    make_video(videos / ".hidden.mp4", seconds=0.4, fps=25)
    return root, data, videos


def _eval(root: Path, data: Path, videos: Path, weights: Path, out: Path, *which: str) -> int:
    """selva-eval on one clip, 2 Euler steps, with `--videos`; `which` default: the whole run."""
    return eval_main(["--data_dir", str(data), "--output_dir", str(out), "--selva_dir", str(weights),
                      "--clips", "1", "--steps", "2", "--seed", "3", "--device", "cpu", "--videos", str(videos),
                      *(which or ("--run_dir", str(root / "run")))])


@pytest.fixture(scope="module")
def first(run, tiny_weights, tmp_path_factory):
    root, data, videos = run
    out = tmp_path_factory.mktemp("eval1") / "out"
    assert _eval(root, data, videos, tiny_weights, out) == 0
    return out, json.loads((out / "eval_summary.json").read_text())


def _video_stream(path: Path) -> tuple[str, int, list[bytes]]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        packets = [bytes(p) for p in c.demux(stream) if p.size]
        return stream.codec_context.name, len(packets), packets


def test_every_adapter_renders_every_video_as_wav_png_and_mp4(first, run):
    out, summary = first
    _, _, videos = run
    ids = [a["id"] for a in summary["adapters"]]
    assert ids == ["baseline", "step00001", "step00002", "final"]
    assert sorted(summary["videos"]["files"]) == sorted(VIDEOS)  # not notes.mp4, .hidden.mp4, readme.txt
    assert summary["videos"]["prompt"] == "tone number 0"  # the first evaluated clip's
    for adapter in summary["adapters"]:
        assert adapter["status"] == "ok" and sorted(adapter["videos"]) == sorted(VIDEOS)
        for name, seconds in VIDEOS.items():
            stem = out / adapter["id"] / "videos" / name
            wave, rate = sf.read(stem.with_suffix(".wav"))
            frames = get_variant("tiny_16k").sequence(seconds).num_audio_frames
            assert rate == 16000 and wave.shape == (frames,) and np.abs(wave).max() > 0
            assert stem.with_suffix(".png").stat().st_size > 0
            codec, count, packets = _video_stream(stem.with_suffix(".mp4"))
            src_codec, src_count, src_packets = _video_stream(videos / f"{name}.mp4")
            assert (codec, count) == (src_codec, src_count) == ("h264", round(seconds * 25))
            assert packets == src_packets  # stream copy: the picture is the original's
            with av.open(str(stem.with_suffix(".mp4"))) as c:
                assert len(c.streams.audio) == 1 and c.streams.audio[0].rate == 16000
                sound = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
            assert abs(sound.shape[1] - frames) <= 2048  # AAC priming and padding
            assert set(adapter["videos"][name]) >= {"hf_energy_ratio", "spectral_centroid_hz"}


def test_the_recommendation_weighs_the_renders_and_says_so(first):
    _, summary = first
    used = summary["recommendation"]["used"]
    assert "hf energy ratio of the audition renders (kitchen, street)" in used, used
    # the tiny model's renders are broadband noise against pure-tone references: each checkpoint is
    # rejected (the final adapter has no loss in its file), by its clip sample first
    assert summary["recommendation"]["id"] is None and len(summary["recommendation"]["rejected"]) == 2


def test_same_adapter_same_sound_and_other_adapters_differ(first, run, tiny_weights, tmp_path, capsys):
    out, _ = first
    root, data, videos = run
    again = tmp_path / "again"
    assert _eval(root, data, videos, tiny_weights, again, "--no_baseline", "--adapter",
                 f"final={root / 'run' / 'adapter_final.pt'}") == 0
    printed = capsys.readouterr().out
    warnings = [line for line in printed.splitlines() if "notes.mp4" in line]
    assert len(warnings) == 1 and "is not a video" in warnings[0] and "ffmpeg -i IN" in warnings[0], printed
    assert "Traceback" not in printed
    for name in VIDEOS:
        a = sf.read(out / "final" / "videos" / f"{name}.wav")[0]
        assert np.array_equal(a, sf.read(again / "final" / "videos" / f"{name}.wav")[0])
        base, step, final = (sf.read(out / i / "videos" / f"{name}.wav")[0] for i in ("baseline", "step00001",
                                                                                      "final"))
        assert not np.allclose(base, step) and not np.allclose(step, final)


@pytest.mark.parametrize("problem", ["empty", "missing", "all_bad"])
def test_a_folder_without_videos_is_one_sentence_and_exit_2(run, tiny_weights, tmp_path, capsys, problem):
    root, data, _ = run
    folder = tmp_path / "nothing"
    if problem != "missing":
        folder.mkdir()
        (folder / "notes.txt").write_text("no video here")
    if problem == "all_bad":
        (folder / "broken.mov").write_bytes(b"\0" * 4096)
    assert _eval(root, data, folder, tiny_weights, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"selva-eval: error: {folder}: "), err
    want = {"empty": "holds no video", "missing": "is not one", "all_bad": "none of its videos could be read"}
    assert want[problem] in err[0] and not (tmp_path / "out" / "eval_summary.json").exists()


def test_list_videos_skips_hidden_files_other_suffixes_and_links_out_of_the_folder(tmp_path):
    folder, outside = tmp_path / "v", tmp_path / "elsewhere.mp4"
    folder.mkdir()
    for name in ("b.MOV", "a.mp4", ".c.mp4", "d.txt", "e.webm"):
        (folder / name).write_bytes(b"x")
    (folder / "sub.mp4").mkdir()
    outside.write_bytes(b"x")
    (folder / "link.mp4").symlink_to(outside)
    (folder / "inner.mkv").symlink_to(folder / "a.mp4")
    notes: list[str] = []
    assert [p.name for p in list_videos(folder, log=notes.append)] == ["a.mp4", "b.MOV", "e.webm", "inner.mkv"]
    assert len(notes) == 1 and "link.mp4" in notes[0]
