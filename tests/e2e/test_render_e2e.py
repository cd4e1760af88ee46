"""End-to-end: audition videos and render jobs from `[paths] render_root`, on the real daemon.

The job trains on a dataset with two audition videos, keeping one step checkpoint (no spread):
each kept checkpoint has every audition video's .wav, .png and .mp4 (the video's own packets,
an AAC track of its length); a pruned one took its auditions with it.

A video dropped into `render/birds/` before the job `birds` has a finished training run waits
(queued, with a note in `selvad status`); once the run is done it is rendered with the run's
recommended checkpoint at the middle of its strength range, into `out/birds/renders/`: the
.wav of the video's length, the .mp4 with the video's own packets and an AAC track of that
length, the spectrogram and a render.toml of what was used. A render.toml dropped into the
folder re-renders with what it names; `selvad enqueue birds --render` renders again on request;
a folder named after no job is a problem in `selvad status`.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf

from tests.video_files import make_video

from .conftest import DaemonTree

pytestmark = pytest.mark.e2e

SECONDS, FPS, RATE = 1.6, 25, 16000  # the video; tiny_16k's sampling rate
AUDITIONS = {"street": 2.0, "kitchen": 1.2}  # audition video -> seconds
STEPS, SAVE_EVERY = 6, 2


def _video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]


def _audio_samples(path: Path) -> int:
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1 and c.streams.audio[0].codec_context.name == "aac"
        return sum(f.samples for f in c.decode(c.streams.audio[0]))


def _check_sound(stem: Path, video: Path, seconds: float) -> None:
    """`stem`.wav is `seconds` of sound; `stem`.mp4 holds `video`'s packets and that sound;
    `stem`.png is a picture."""
    wave, rate = sf.read(stem.with_name(stem.name + ".wav"), dtype="float32")
    assert rate == RATE and abs(len(wave) / rate - seconds) < 0.05, (stem, len(wave), rate)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0
    mp4 = stem.with_name(stem.name + ".mp4")
    assert _video_packets(mp4) == _video_packets(video)  # the picture is stream copied
    assert abs(_audio_samples(mp4) - len(wave)) <= 2048  # AAC frame padding
    assert stem.with_name(stem.name + ".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _check_outputs(renders: Path, video: Path) -> dict:
    """The four files of `video`'s render exist and play; its render.toml, read."""
    _check_sound(renders / video.stem, video, SECONDS)
    return tomllib.loads((renders / f"{video.stem}.render.toml").read_text())


def _auditions(tree: DaemonTree) -> dict[str, Path]:
    """The dataset's audition videos, written."""
    folder = tree.dataset("birds") / "audition"
    folder.mkdir(parents=True)
    return {name: make_video(folder / f"{name}.mp4", seconds=seconds, fps=FPS, width=80, height=48)
            for name, seconds in AUDITIONS.items()}


def _check_auditions(run_dir: Path, videos: dict[str, Path]) -> list[int]:
    """Each kept checkpoint has its auditions, a pruned one has none; the kept steps."""
    kept = []
    for step in range(SAVE_EVERY, STEPS + 1, SAVE_EVERY):
        stems = [run_dir / "audition" / f"{name}_step{step:05d}" for name in videos]
        if (run_dir / f"adapter_step{step:05d}.pt").is_file():
            kept.append(step)
            for (name, video), stem in zip(videos.items(), stems, strict=True):
                _check_sound(stem, video, AUDITIONS[name])
        else:
            assert not [p.name for s in stems for p in s.parent.glob(s.name + ".*")], step
    assert STEPS in kept and len(kept) < STEPS // SAVE_EVERY, kept  # retention pruned one
    return kept


def _render_runs(tree: DaemonTree, n: int, timeout: float = 120) -> list:
    """Wait until the job has `n` render runs and all of them ended; they, oldest first."""
    def ended() -> list:
        runs = tree.runs("birds", "render")
        return runs if len(runs) >= n and all(r.state in ("done", "failed") for r in runs) else []

    runs = sorted(tree.wait_for(ended, timeout, f"{n} render runs to end"), key=lambda r: r.created_at)
    assert [r.state for r in runs] == ["done"] * len(runs), [(r.id, r.error) for r in runs]
    return runs


def test_a_dropped_video_waits_for_training_then_renders_with_the_recommendation(tree: DaemonTree) -> None:
    folder = tree.watch_renders() / "birds"
    tree.config.write_text(tree.config.read_text().replace(
        "keep_last_checkpoints = 10", "keep_last_checkpoints = 1\nkeep_spread = false"))
    folder.mkdir(parents=True)
    video = make_video(folder / "door.mp4", seconds=SECONDS, fps=FPS, width=96, height=64,
                       audio_rate=RATE)
    (folder / "prompts.txt").write_text("door.mp4: a heavy door slams\n")
    tree.write_job("birds", "birds", steps=STEPS, save_every=SAVE_EVERY, log_every=2, warmup_steps=1)
    tree.start()  # the job's dataset does not exist yet: the render waits for a trained run
    render = tree.wait_for(lambda: tree.runs("birds", "render"), 60, "the render run")[0]
    waiting = tree.wait_for(lambda: "no finished training run" in (tree.queue.get(render.id).error or ""),
                            60, "the render's waiting note")
    status = tree.cli("status").stdout
    assert waiting and "birds (door.mp4)" in status and "no finished training run yet" in status, status

    auditions = _auditions(tree)
    tree.add_clips("birds", 3)
    train = tree.wait_for(lambda: tree.runs("birds", "train"), 60, "the training run")[0]
    assert tree.wait_state(train.id, ("done", "failed"), 240).state == "done", tree.log_tail()
    done = _render_runs(tree, 1)[0]
    renders = tree.root / "out" / "birds" / "renders"
    assert done.output_dir == str(renders)
    record = _check_outputs(renders, video)
    run_dir = Path(tree.queue.get(train.id).output_dir)
    kept = _check_auditions(run_dir, auditions)
    rec = json.loads((run_dir / "meta.json").read_text())["recommendation"]
    adapter = record["adapter"]
    # the tiny model's checkpoints all sound noisy, so it recommends none: the final adapter
    expected = run_dir / (rec["id"] or "adapter_final.pt")
    assert Path(adapter["file"]) == expected and adapter["run"] == train.id, (adapter, rec)
    assert adapter["strength"] == pytest.approx(sum(rec["strength_range"]) / 2, abs=1e-3)
    assert record["sampler"]["prompt"] == "a heavy door slams"  # its own prompts.txt line
    assert record["sampler"]["cfg"] == 4.5 and record["sampler"]["steps"] == 25  # the node's defaults

    # render.toml names a checkpoint and settings: the folder's videos render again with them
    (folder / "render.toml").write_text(f"step = {kept[0]}\nstrength = 0.5\nseed = 7\nsteps = 3\n")
    _render_runs(tree, 2)
    record = _check_outputs(renders, video)
    assert Path(record["adapter"]["file"]) == run_dir / f"adapter_step{kept[0]:05d}.pt"
    assert record["adapter"]["strength"] == 0.5
    assert record["adapter"]["chosen_by"] == f"render.toml: step {kept[0]}"
    assert (record["sampler"]["seed"], record["sampler"]["steps"]) == (7, 3)

    # the same settings again only on request
    out = tree.cli("enqueue", "birds", "--render")
    assert out.returncode == 0, out
    _render_runs(tree, 3)
    assert len(tree.runs("birds", "render")) == 3

    # a folder named after no job: a problem in status, the daemon goes on
    stray = tree.render_root / "nosuchjob"
    stray.mkdir()
    make_video(stray / "x.mp4", seconds=0.5, fps=FPS)
    tree.wait_for(lambda: "no job named nosuchjob" in tree.cli("status").stdout, 60,
                  "the stray folder's problem")
    assert tree.proc is not None and tree.proc.poll() is None
