"""`selva-eval --videos DIR`: the offline audition, every evaluated adapter heard on new videos.

The videos of DIR (its regular, visible files with a video suffix, name-sorted; a symlink
that leads out of DIR is left out) are encoded once, as ComfyUI-SelVA's Feature Extractor
node encodes them (`video.extractor`), with one prompt (`--prompt`, else the first evaluated
clip's), before the generator loads; the video encoders are freed before anything is
generated. Duration: the video's own, at most the variant's training length (8 s), as the
trainer's auditions (`training.audition`) cut theirs.

Each adapter (and the baseline) then renders every video from the same noise (the run seed +
crc32 of the video's name, never its index, so adding a video changes no other), so the
adapter is all that differs between two renders of a video. Files, per adapter:
`<output>/<adapter id>/videos/<name>.wav`, its spectrogram `<name>.png` and `<name>.mp4`
(the original picture, stream-copied, with the new sound as AAC). Each render's spectral
metrics (no reference: a new video has no sound to compare with) go into the summary and
into the recommendation, which rejects an adapter whose render shows the noise symptom.

A video that cannot be decoded is one warning naming the file and the fix; the others go on.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selva_engine.errors import DatasetError
from selva_engine.evaluation.metrics import compute_metrics
from selva_engine.inference.synth import Synthesizer
from selva_engine.model.variants import Variant
from selva_engine.outputs.report import loudness_normalize, write_wav
from selva_engine.outputs.spectrogram import write_spectrogram
from selva_engine.video.decode import read_stream_info
from selva_engine.video.extractor import PreparedFrames, extract_videos, prepare_frames
from selva_engine.video.mux import MuxError, mux_audio
from selva_engine.video.probe import VIDEO_SUFFIXES, output_stems

__all__ = ["VIDEOS_DIR", "EvalVideo", "list_videos", "prepare_videos", "render_videos"]

VIDEOS_DIR = "videos"  # under each adapter's output folder


@dataclass(frozen=True)
class EvalVideo:
    """One video ready to render: its features fitted to its own duration, and its prompt."""

    name: str  # the output stem: the video's stem (`_2`, `_3` ... when stems repeat)
    path: Path
    seconds: float  # generated: the video's length, at most the training duration
    prompt: str
    clip: np.ndarray  # (Nc, clip_dim) float32 at `seconds`
    sync: np.ndarray  # (Ns, sync_dim) float32 at `seconds`

    def noise_seed(self, seed: int) -> int:
        """The seed of this video's noise: the same for every adapter, from the name, not the index."""
        return seed + zlib.crc32(self.name.encode())


def list_videos(folder: Path | str, log: Callable[[str], None] = print) -> list[Path]:
    """The videos of `folder`, name-sorted: regular visible files with a suffix of VIDEO_SUFFIXES
    (a symlink leading out of `folder` is left out, with a note). ValueError naming `folder`
    when it is no directory or holds no video."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{root}: --videos needs a directory of videos, and this is not one; check the path")
    real_root = os.path.realpath(root)
    found = []
    for name in sorted(os.listdir(root)):
        path = root / name
        if name.startswith(".") or path.suffix.lower() not in VIDEO_SUFFIXES or not path.is_file():
            continue
        if not Path(os.path.realpath(path)).is_relative_to(real_root):
            log(f"note: skipping {path}: a link to a file outside {root}")
            continue
        found.append(path)
    if not found:
        raise ValueError(f"{root}: holds no video to audition (looked for {' / '.join(VIDEO_SUFFIXES)} files); "
                         "put the videos in it or pass another directory to --videos")
    return found


def _fit(arr: np.ndarray, rows: int) -> np.ndarray:
    """(1, T, D) features -> (rows, D) float32, cut or zero-padded."""
    out = np.zeros((rows, arr.shape[-1]), np.float32)
    n = min(rows, arr.shape[1])
    out[:n] = arr[0, :n]
    return out


def _prepare(paths: Sequence[Path], max_seconds: float, log: Callable[[str], None]) -> list[tuple[Path, PreparedFrames]]:
    """Each decodable video's frames (the first `max_seconds` at most); a bad one is a warning."""
    ready = []
    for path in paths:
        try:
            info = read_stream_info(path)
            duration = 0.0 if info.duration <= max_seconds else max_seconds  # 0: the whole video
            ready.append((path, prepare_frames(path, duration=duration)))
        except DatasetError as err:  # DecodeError: names the file, the problem and the fix
            log(f"warning: skipping video {err}")
    return ready


def prepare_videos(paths: Sequence[Path], *, prompt: str, selva_dir: str | Path, variant: Variant,
                   device: str = "auto", log: Callable[[str], None] = print) -> list[EvalVideo]:
    """The videos at `paths` encoded once with `prompt` (frames decoded first, then the video
    encoders of `selva_dir` loaded, used for all of them and freed), fitted to `variant`'s
    sequence lengths at each video's duration. A video that cannot be decoded is a warning
    through `log` and is left out; [] when none is left (the encoders then never load)."""
    from selva_engine.device import resolve_device
    from selva_engine.video.encoders import load_video_encoders

    if not prompt.strip():
        raise ValueError("--videos needs a prompt saying what the sound is, and the first clip has none; "
                         "pass e.g. --prompt \"a dog barking\"")
    seq = variant.sequence()
    ready = _prepare(paths, seq.duration, log)
    if not ready:
        return []
    encoders = load_video_encoders(selva_dir, device=resolve_device(device))
    try:
        feats = extract_videos([(frames, prompt) for _, frames in ready], encoders)
    finally:
        encoders.free()
    videos = []
    for name, (path, _), f in zip(output_stems([p for p, _ in ready]), ready, feats, strict=True):
        at = variant.sequence(f.duration)
        videos.append(EvalVideo(name, path, f.duration, prompt, _fit(f.clip_features, at.clip_seq_len),
                                _fit(f.sync_features, at.sync_seq_len)))
    return videos


def render_videos(synth: Synthesizer, videos: Sequence[EvalVideo], out_dir: Path, *, seed: int, cfg: float,
                  steps: int, label: str, log: Callable[[str], None] = print,
                  failed: set[str] | None = None) -> dict[str, dict[str, float]]:
    """Render every video with the synthesizer's current adapter into `out_dir` (.wav, .png, .mp4
    per video); returns {video name: spectral metrics of its new sound}. A video whose .mp4
    cannot be written is a warning (once per name in `failed`); its .wav and .png stay."""
    failed = set() if failed is None else failed
    rate = synth.sampling_rate
    metrics = {}
    for video in videos:
        wave = synth.generate(video.clip, video.sync, video.prompt, seed=video.noise_seed(seed), cfg=cfg,
                              steps=steps, duration=video.seconds)
        wave = loudness_normalize(wave)
        write_wav(out_dir / f"{video.name}.wav", wave, rate)
        write_spectrogram(out_dir / f"{video.name}.png", wave, rate, f"{video.path.name}, {label}")
        try:
            mux_audio(video.path, wave, rate, out_dir / f"{video.name}.mp4")
        except (MuxError, OSError, ValueError) as exc:  # av.FFmpegError is an OSError / ValueError
            if video.name not in failed:
                failed.add(video.name)
                log(f"warning: {video.path}: cannot write {video.name}.mp4 ({exc}); its .wav is written, "
                    "re-encode the video as H.264 .mp4 to get the picture too")
        metrics[video.name] = compute_metrics(wave, rate).to_dict()
    return metrics
