"""Audition videos: at every checkpoint, the adapter as it is then, heard on videos it never trained on.

Where they come from: the videos of the dataset's `audition/` folder (never clips: the dataset
is read non-recursively, so they are neither trained on nor in the validation split) and the
paths a job names (`[sample] videos`, TrainConfig.sample_videos, relative to the dataset).

Once per run, before the model is built (`prepare_auditions`): each video is probed and its
features extracted as the Feature Extractor node does (`data.video_extract.video_features`,
through the run's feature cache, keyed by the video's content hash, the prompt, the window
and the encoders), with the prompt of the checkpoint sample's clip (the first training clip:
its prompts.txt / stored / dataset prompt) and the text features already extracted for it.
Duration: the training sequence's (the variant's 8 s), or the video's own when shorter: the
features are zero-padded to the training lengths as a short training clip's are, the sound
is generated at the training length and cut to the video's. A bad video is one warning
naming the file; training goes on without it.

At each checkpoint (`Auditions.render`, the model in eval mode): the videos are sampled a
training batch's worth at a time (one batched Euler pass and decode), each with
the job's sample settings (steps, cfg, negative prompt) from its own fixed noise, a generator
seeded from the run seed and the video's name (never the global RNG, so training is the same
with or without auditions), and written as `audition/<video>_stepNNNNN.wav`, its spectrogram
`.png` and `<video>_stepNNNNN.mp4`: the original picture, stream-copied, with the new sound.
Each render's spectral metrics (evaluation.metrics, no reference: a new video has no sound to
compare with) come back with the files; `read_audition_metrics` measures them again from the
`.wav` files (the checkpoints before a resume), so the recommendation can weigh every one.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_engine.data.extract import FeatureCache
from selva_engine.data.video_extract import default_encoders_factory, video_features, video_identity
from selva_engine.data.videos import VideoClip, is_video_name
from selva_engine.errors import DatasetError
from selva_engine.evaluation.metrics import compute_metrics
from selva_engine.inference.sample import decode_to_audio, generate_latents
from selva_engine.outputs import report
from selva_engine.outputs.spectrogram import write_spectrogram
from selva_engine.video.mux import MuxError, mux_audio
from selva_engine.video.probe import VideoError, output_stems, probe_video

__all__ = ["AUDITION_DIR", "AuditionVideo", "Auditions", "audition_files", "find_audition_videos",
           "prepare_auditions", "read_audition_metrics"]

AUDITION_DIR = "audition"  # in the dataset: the videos; in the run directory: what each checkpoint made
NOISE_SEED = 4  # the auditions' noise: seed + 4 + crc32(name) (the sample's is seed + 3)
PICTURE_BYTES = 128 << 10  # a spectrogram picture, about 40 KB


@dataclass(frozen=True)
class AuditionVideo:
    """One audition video ready to sample: its features at the training lengths on the device."""

    name: str  # the output stem: the video's stem (`_2`, `_3` ... when stems repeat)
    path: Path
    seconds: float  # sound kept: the video's length, at most the training duration
    clip_f: torch.Tensor  # (1, Nc, clip_dim)
    sync_f: torch.Tensor  # (1, Ns, sync_dim)

    def noise_seed(self, seed: int) -> int:
        """The seed of this video's fixed noise: the run seed and the name, never the index."""
        return seed + NOISE_SEED + zlib.crc32(self.name.encode())


def audition_files(name: str, step: int) -> tuple[str, str, str]:
    """The file names a checkpoint at `step` writes for audition video `name` (.wav, .png, .mp4)."""
    stem = f"{name}_step{step:05d}"
    return f"{stem}.wav", f"{stem}.png", f"{stem}.mp4"


def read_audition_metrics(out_dir: Path, names: Sequence[str], step: int) -> dict[str, dict[str, float]]:
    """{video: spectral metrics} of the `.wav` renders of the videos `names` at `step` found in
    `out_dir/audition/` (a missing or unreadable file is left out). Reads files only."""
    import soundfile as sf

    out = {}
    for name in names:
        try:
            wave, rate = sf.read(out_dir / AUDITION_DIR / audition_files(name, step)[0], dtype="float32")
        except (OSError, RuntimeError):  # soundfile raises LibsndfileError (a RuntimeError)
            continue
        out[name] = compute_metrics(wave.mean(axis=1) if wave.ndim == 2 else wave, rate).to_dict()
    return out


def find_audition_videos(data_dir: Path | str, named: Sequence[str] = ()) -> tuple[list[Path], list[str]]:
    """The audition videos of a dataset: `audition/`'s videos (name-sorted), then the `named`
    paths (relative to the dataset; each once). Returns (paths, warnings): a named path that
    is not a file inside the dataset is a warning naming it and the fix, and is left out."""
    root = Path(data_dir)
    folder = root / AUDITION_DIR
    found = sorted(folder / n for n in os.listdir(folder) if is_video_name(n)) if folder.is_dir() else []
    warnings: list[str] = []
    for rel in named:
        path = root / rel
        inside = Path(os.path.realpath(path)).is_relative_to(os.path.realpath(root))
        if not inside or not path.is_file():
            warnings.append(f"{path}: [sample] videos names no video file inside the dataset; fix the path "
                            "(relative to the dataset directory) or remove it")
        elif path not in found:
            found.append(path)
    return found, warnings


def _probe(paths: Sequence[Path], root: Path, prompt: str, seconds: float, log: Any) -> list[VideoClip]:
    """A VideoClip (the first `seconds` at most, no mask, own track) of each readable video."""
    clips = []
    for path in paths:
        try:
            info = probe_video(path, root=root)
        except DatasetError as err:
            log.warn(f"skipping audition video: {err}")
            continue
        clips.append(VideoClip(stem=path.stem, video_path=path, audio_path=None, start=0.0,
                               duration=min(info.duration, seconds), prompt=prompt, mask_path=None,
                               mask_strength=1.0, mask_clip=True, mask_sync=True, info=info))
    return clips


def _fit(arr: np.ndarray, rows: int, device: torch.device) -> torch.Tensor:
    """(1, T, D) or (T, D) features -> (1, rows, D) float32 on `device`, cut or zero-padded."""
    a = np.asarray(arr, np.float32)
    a = a[0] if a.ndim == 3 else a
    out = np.zeros((rows, a.shape[-1]), np.float32)
    out[: min(rows, a.shape[0])] = a[:rows]
    return torch.from_numpy(out)[None].to(device)


def prepare_auditions(ctx: Any, prompt: str, text_f: torch.Tensor,
                      encoders_factory: Any = None) -> Auditions | None:
    """The run's audition videos with their features (extracted now or from the cache), or
    None when there are none. `prompt` and `text_f` ((1, Nt, D)) are the sample clip's; a
    missing, unreadable or mismatched video is a warning (`ctx.log`) and is left out."""
    cfg, seq = ctx.cfg, ctx.variant.sequence()
    root = Path(cfg.data_dir)
    paths, warnings = find_audition_videos(root, cfg.sample_videos)
    for w in warnings:
        ctx.log.warn(w)
    clips = _probe(paths, root, prompt, seq.duration, ctx.log)
    if not clips:
        return None
    started = time.monotonic()
    cache = FeatureCache(cfg.cache_dir or ctx.out_dir / ".cache")
    entries, problems, stats = video_features(
        clips, cache=cache, identity=video_identity(ctx.weights),
        encoders_factory=encoders_factory or default_encoders_factory(ctx.weights, ctx.device))
    for err in problems:
        ctx.log.warn(f"skipping audition video: {err}")
    names = dict(zip([c.video_path for c in clips], output_stems([c.video_path for c in clips]), strict=True))
    videos = []
    for clip, entry in zip(clips, entries, strict=True):
        if entry is None:
            continue
        widths = (int(entry["clip_features"].shape[-1]), int(entry["sync_features"].shape[-1]))
        if widths != (ctx.variant.clip_dim, ctx.variant.sync_dim):
            err = VideoError(clip.video_path, f"the video encoders give {widths[0]}/{widths[1]}-wide features",
                             "use the video encoder weights that belong to this variant (selva-weights check)")
            ctx.log.warn(f"skipping audition video: {err}")
            continue
        videos.append(AuditionVideo(names[clip.video_path], clip.video_path, clip.duration,
                                    _fit(entry["clip_features"], seq.clip_seq_len, ctx.device),
                                    _fit(entry["sync_features"], seq.sync_seq_len, ctx.device)))
    ctx.log.emit({"event": "audition_ready", "videos": [v.path.name for v in videos],
                  "seconds": round(time.monotonic() - started, 3), **stats.to_dict()})
    return Auditions(ctx, videos, text_f) if videos else None


class Auditions:
    """The run's audition videos; `render` writes each one's files for a checkpoint."""

    def __init__(self, ctx: Any, videos: list[AuditionVideo], text_f: torch.Tensor) -> None:
        self.ctx, self.videos, self.text_f = ctx, videos, text_f
        self.failed: set[str] = set()  # videos whose .mp4 could not be written (warned once)

    def space_needed(self) -> int:
        """Bytes one checkpoint's auditions may write: per video its 16-bit wav, its picture and
        the source video's size (the copied picture; the AAC sound is smaller than the wav)."""
        seq = self.ctx.variant.sequence()
        wav = 44 + 2 * int(seq.duration * seq.sampling_rate)
        return sum(2 * wav + PICTURE_BYTES + v.path.stat().st_size for v in self.videos)

    def render(self, model: Any, codec: Any, autocast: Any, negative_text: torch.Tensor | None,
               step: int) -> dict[str, Any]:
        """Sample, decode and write every video's files for the checkpoint at `step` (the model
        as it is, eval mode); returns {"seconds": wall time, "files": paths written, "metrics":
        {video name: spectral metrics of its new sound}}."""
        started = time.monotonic()
        ctx, cfg = self.ctx, self.ctx.cfg
        out = ctx.out_dir / AUDITION_DIR
        out.mkdir(parents=True, exist_ok=True)
        rate = ctx.variant.sequence().sampling_rate
        files: list[str] = []
        metrics: dict[str, dict[str, float]] = {}
        size = max(1, cfg.batch_size)
        for at in range(0, len(self.videos), size):  # a training batch's worth of videos at once
            chunk = self.videos[at:at + size]
            for video, wave in zip(chunk, self._sample(model, codec, autocast, negative_text, chunk), strict=True):
                wave = report.loudness_normalize(wave[: int(round(video.seconds * rate))])
                files += self._write(out, video, wave, rate, step)
                metrics[video.name] = compute_metrics(wave, rate).to_dict()
        return {"seconds": round(time.monotonic() - started, 3), "files": files, "metrics": metrics}

    def _sample(self, model: Any, codec: Any, autocast: Any, negative_text: torch.Tensor | None,
                videos: list[AuditionVideo]) -> list[np.ndarray]:
        """The waveforms of `videos`, sampled as one batch (one Euler pass, CFG's branches
        batched, one VAE decode and vocoder call), each from its own fixed noise."""
        ctx, cfg = self.ctx, self.ctx.cfg
        seq = ctx.variant.sequence()
        noise = torch.cat([torch.randn(1, seq.latent_seq_len, ctx.variant.latent_dim,
                                       generator=torch.Generator().manual_seed(v.noise_seed(cfg.seed)))
                           for v in videos]).to(ctx.device)
        clip_f = torch.cat([v.clip_f for v in videos])
        sync_f = torch.cat([v.sync_f for v in videos])
        text_f = self.text_f.expand(len(videos), -1, -1)
        with torch.no_grad(), autocast:
            lat = generate_latents(model, clip_f, sync_f, text_f, noise=noise, negative_text=negative_text,
                                   cfg=cfg.sample_cfg, steps=cfg.sample_steps)
        waves = decode_to_audio(codec, lat).float().cpu().numpy()
        return list(waves)

    def _write(self, out: Path, video: AuditionVideo, wave: np.ndarray, rate: int, step: int) -> list[str]:
        """The .wav, .png and .mp4 of one video (a video that cannot be muxed: a warning, once)."""
        wav_name, png_name, mp4_name = audition_files(video.name, step)
        written = [report.write_wav(out / wav_name, wave, rate),
                   write_spectrogram(out / png_name, wave, rate, f"{video.path.name} at step {step}")]
        try:
            written.append(mux_audio(video.path, wave, rate, out / mp4_name))
        except (MuxError, OSError, ValueError) as exc:  # av.FFmpegError is an OSError / ValueError
            if video.name not in self.failed:
                self.failed.add(video.name)
                self.ctx.log.warn(f"audition video {video.path}: cannot write {mp4_name} ({exc}); its .wav is "
                                  "written, re-encode the video as H.264 .mp4 to get the picture too")
        return [str(p) for p in written]
