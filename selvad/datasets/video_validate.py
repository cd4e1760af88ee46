"""Validation of a dataset's videos: each video clip checked like a `.npz` clip, never a crash.

Errors: a video that is not read (not a regular file, a link out of the dataset), not
decodable, without a video stream or frames, with absurd declared dimensions or lengths (the
header is checked before decoding), several videos / audio files / masks for one stem, a
video with neither a clean recording beside it nor an audio track, a bad `[video]` table in
dataset.toml. Warnings: the video's own sound is used (the guide recommends clean isolated
recordings), a video longer than 8 s without `split`, what differs from ComfyUI's VHS decode
(size not a multiple of 8, rotation, variable frame rate, very short), a `.npz` beside the video.
The clean recording gets the audio checks of `validate` (`check_audio`).

The `audition/` folder's videos (rendered at every checkpoint, never clips: see
selva_engine.training.audition) are probed by `check_auditions`; a bad one is a warning naming
it, as training goes on without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from selva_engine.data.dataset import AUDIO_SUFFIXES
from selva_engine.data.videos import CLIP_SECONDS, VideoClip, is_video_name, scan_videos
from selva_engine.errors import DatasetError
from selva_engine.video.probe import probe_video
from selvad.datasets.report import ERROR, WARNING, ClipEntry, ValidationReport

__all__ = ["AUDITION_DIR", "check_auditions", "check_videos", "window_label"]

AUDITION_DIR = "audition"  # selva_engine.training.audition's (that module loads torch)

AudioCheck = Callable[[ValidationReport, str, Path, float | None], bool]


def window_label(clip: VideoClip) -> str:
    """`long.mp4, 8-16 s`: the video and the window a clip comes from."""
    return f"{clip.video_path.name}, {clip.start:g}-{clip.start + clip.duration:g} s"


def _prompt_source(clip: VideoClip, prompts: dict[str, str]) -> str:
    names = (clip.video_path.name, f"{clip.video_path.stem}.npz", f"{clip.stem}.npz")
    return "prompts.txt" if any(n in prompts for n in names) else "directory"


def check_videos(report: ValidationReport, directory: Path, prompts: dict[str, str], npz_stems: set[str],
                 check_audio: AudioCheck, video: dict | None = None) -> int:
    """Add the findings and usable clips of the videos of `directory`; returns how many videos there are."""
    found = scan_videos(directory, audio_suffixes=AUDIO_SUFFIXES, npz_stems=npz_stems, prompts=prompts,
                        fallback_prompt=directory.resolve().name, overrides=video)
    for err in found.problems:
        if err.code == "dataset-toml" and not err.problem.startswith("[video]"):
            continue  # the file itself cannot be read: validate.py reports that once
        name = err.path.name if err.path.parent == directory else str(err.path)
        report.add(ERROR, name, err.code, err.problem, err.fix)
    for code, text in found.warnings:
        file, _, rest = text.partition(": ")
        problem, _, fix = rest.partition(" (fix: ")
        report.add(WARNING, Path(file).name, code, problem, fix.rstrip(")"))
    bad_audio: set[Path] = set()
    for clip in found.clips:
        if clip.audio_path is not None and clip.start == 0.0:
            seconds = min(clip.info.duration, CLIP_SECONDS)
            if not check_audio(report, clip.audio_path.name, clip.audio_path, seconds):
                bad_audio.add(clip.audio_path)
    for clip in found.clips:
        if clip.audio_path not in bad_audio:
            report.clips.append(ClipEntry(clip.stem, clip.prompt, _prompt_source(clip, prompts),
                                          video=window_label(clip)))
    return len({c.video_path for c in found.clips}) + len(found.problems)


def check_auditions(report: ValidationReport, directory: Path) -> list[str]:
    """Probe the videos of `directory/audition/` (never clips); a bad one is a warning naming
    `audition/<name>`. Returns the names of the usable audition videos."""
    folder = directory / AUDITION_DIR
    if not folder.is_dir():
        return []
    good = []
    for name in sorted(n for n in os.listdir(folder) if is_video_name(n)):
        try:
            probe_video(folder / name, root=directory)
        except DatasetError as err:
            report.add(WARNING, f"{AUDITION_DIR}/{name}", "bad-audition-video",
                       f"audition video left out: {err.problem}", err.fix)
            continue
        good.append(name)
    return good
