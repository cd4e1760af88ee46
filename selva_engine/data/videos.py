"""Video files as dataset clips: pairing, masks, prompts, settings and 8-second windows.

A video (`.mp4 .mov .mkv .webm .avi`, suffix case-insensitive) in a dataset directory is a clip
whose visual features are extracted by selvad (the SelVA Feature Extractor node's pipeline,
`selva_engine.video`) instead of being exported from ComfyUI. Rules:

- audio: `<stem>.wav|flac|…` beside the video is the clean recording (the seed guide's rule);
  else the video's own audio track, aligned to the frames, with a warning that the guide
  recommends clean isolated recordings; neither is an error naming the file and the fix.
- a `<stem>.npz` beside the video holds that clip's features already: the `.npz` is used and
  the video is ignored (a warning says so).
- masks (optional): `<stem>.mask.png` (static) or `<stem>.mask.mp4` (per frame); such files are
  never clips themselves. `mask_strength`, `mask_clip`, `mask_sync` come from the dataset's
  `dataset.toml` `[video]` table (or a job), as the node's inputs of the same names.
- length: the first 8 s by default; `split = true` cuts consecutive 8-s windows (the last one
  kept when at least 1 s long), each its own clip `<stem>_partNN` with its own features and
  audio window.
- prompt: `prompts.txt` may name `clip.mp4:` or `clip.npz:` (a window `clip_partNN.npz:`), else
  the dataset directory's name.
Every video is probed (`selva_engine.video.probe`) header first; a bad one is one problem.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from selva_engine.data.dataset_file import DatasetFileError, read_dataset_file
from selva_engine.errors import AmbiguousAudioError, DatasetError, open_error
from selva_engine.io import regular_file_stat
from selva_engine.video.probe import VIDEO_SUFFIXES, VideoError, VideoInfo, probe_video

__all__ = ["CLIP_SECONDS", "MASK_SUFFIXES", "MIN_PART_SECONDS", "VIDEO_SUFFIXES", "VideoClip", "VideoSettings",
           "VideoSource", "find_videos", "is_mask_name", "is_video_name", "plan_windows", "read_video_settings",
           "video_clips"]

CLIP_SECONDS = 8.0  # what one training clip holds
MIN_PART_SECONDS = 1.0  # a split's last window shorter than this is dropped
MASK_SUFFIXES: tuple[str, ...] = (".mask.png", ".mask.mp4")
OWN_TRACK_WARNING = ("uses the video's own sound track: the seed guide recommends clean isolated recordings "
                     "(put the clean recording beside it as {stem}.wav or .flac)")


def is_mask_name(name: str) -> bool:
    """`x.mask.png` / `x.mask.mp4` (any case): a mask beside a video, never a clip."""
    low = name.lower()
    return low.endswith(MASK_SUFFIXES) or (low.rsplit(".", 1)[0].endswith(".mask")
                                           and os.path.splitext(low)[1] in VIDEO_SUFFIXES)


def is_video_name(name: str) -> bool:
    """A visible file with a video suffix that is not a mask."""
    return (not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_SUFFIXES
            and not is_mask_name(name))


@dataclass(frozen=True)
class VideoSettings:
    """How a dataset's videos become clips (the node's mask inputs, and splitting)."""

    mask_strength: float = 1.0
    mask_clip: bool = True
    mask_sync: bool = True
    split: bool = False

    def updated(self, values: dict[str, Any]) -> VideoSettings:
        """These settings with `values` (already checked) applied."""
        return replace(self, **{k: v for k, v in values.items() if v is not None})


_SETTING_TYPES = {"mask_strength": float, "mask_clip": bool, "mask_sync": bool, "split": bool}


def check_video_table(table: Any, where: Path | str) -> tuple[dict[str, Any], list[DatasetError]]:
    """The valid keys of a `[video]` table and one problem per bad key (unknown, wrong type, range)."""
    if not isinstance(table, dict):
        return {}, [DatasetFileError(where, "[video] must be a table", "write `[video]` on its own line")]
    out: dict[str, Any] = {}
    problems: list[DatasetError] = []
    for key, value in table.items():
        kind = _SETTING_TYPES.get(key)
        if kind is None:
            problems.append(DatasetFileError(where, f"[video] has an unknown key {key!r}",
                                             f"use one of {', '.join(_SETTING_TYPES)}"))
        elif kind is bool and not isinstance(value, bool):
            problems.append(DatasetFileError(where, f"[video] {key} must be true or false (got {value!r})",
                                             f"write `{key} = true` or `{key} = false`"))
        elif kind is float and (isinstance(value, bool) or not isinstance(value, int | float)
                                or not 0.0 <= float(value) <= 1.0):
            problems.append(DatasetFileError(where, f"[video] {key} must be a number from 0 to 1 (got {value!r})",
                                             f"write e.g. `{key} = 0.5`"))
        else:
            out[key] = float(value) if kind is float else value
    return out, problems


def read_video_settings(directory: Path | str, base: VideoSettings = VideoSettings()
                        ) -> tuple[VideoSettings, list[DatasetError]]:
    """`base` updated with `<directory>/dataset.toml`'s `[video]` table, and the problems found."""
    data, err = read_dataset_file(directory)
    if err is not None:
        return base, [err]
    if "video" not in data:
        return base, []
    values, problems = check_video_table(data["video"], Path(directory) / "dataset.toml")
    return base.updated(values), problems


@dataclass(frozen=True)
class VideoSource:
    """One video of a dataset with the files beside it (same stem)."""

    stem: str
    video_path: Path
    audio_path: Path | None  # the clean recording, None: the video's own track
    mask_path: Path | None


@dataclass(frozen=True)
class VideoClip:
    """One training clip cut from a video: a window of at most 8 s, its prompt, mask and audio."""

    stem: str  # the clip's name: the video's stem, or `<stem>_partNN` for a window of a split video
    video_path: Path
    audio_path: Path | None  # clean recording (read from `start`), None: the video's own track
    start: float  # seconds into the video (frame 0 = 0)
    duration: float  # seconds of video encoded
    prompt: str
    mask_path: Path | None
    mask_strength: float
    mask_clip: bool
    mask_sync: bool
    info: VideoInfo


def _stat_ok(path: Path, directory: Path, problems: list[DatasetError]) -> bool:
    try:
        regular_file_stat(path, directory)
        return True
    except OSError as exc:
        problems.append(open_error(path, exc))
        return False


def find_videos(directory: Path | str, audio_suffixes: tuple[str, ...],
                npz_stems: set[str]) -> tuple[list[VideoSource], list[DatasetError], list[str]]:
    """The videos of `directory` with their audio and mask files, problems, and warnings.

    Problems: a video or mask that is not read (not a regular file, a link out), several
    videos, audio files or masks for one stem. Warnings: a video whose `.npz` is present.
    """
    directory = Path(directory)
    entries = sorted(os.listdir(directory))
    problems: list[DatasetError] = []
    warnings: list[str] = []
    by_stem: dict[str, list[Path]] = {}
    for name in entries:
        if is_video_name(name):
            by_stem.setdefault(os.path.splitext(name)[0], []).append(directory / name)
    out: list[VideoSource] = []
    for stem, videos in sorted(by_stem.items()):
        if stem in npz_stems:
            warnings.append(f"{videos[0]}: {stem}.npz holds this clip's features, so the video is not extracted "
                            f"(fix: remove {stem}.npz to extract the features from the video)")
            continue
        if len(videos) > 1:
            problems.append(AmbiguousAudioError(directory / stem, "several videos for one clip: "
                                                + ", ".join(v.name for v in videos),
                                                "keep exactly one video per stem (rename the others)"))
            continue
        audio = [directory / n for n in entries
                 if os.path.splitext(n)[0] == stem and os.path.splitext(n)[1].lower() in audio_suffixes]
        masks = [directory / n for n in entries if n.lower() in {stem.lower() + s for s in MASK_SUFFIXES}
                 and n[: len(stem)] == stem]
        if len(audio) > 1 or len(masks) > 1:
            extra = audio if len(audio) > 1 else masks
            problems.append(AmbiguousAudioError(directory / stem, "several files for one clip: "
                                                + ", ".join(p.name for p in extra),
                                                "keep one audio file and at most one mask per video"))
            continue
        if not all(_stat_ok(p, directory, problems) for p in [videos[0], *audio, *masks]):
            continue
        out.append(VideoSource(stem, videos[0], audio[0] if audio else None, masks[0] if masks else None))
    return out, problems, warnings


def plan_windows(duration: float, split: bool) -> list[tuple[float, float]]:
    """(start, seconds) of each clip cut from a video of `duration` seconds.

    Without `split`: the first 8 s (or the whole video when shorter). With it: consecutive 8-s
    windows; a last window shorter than MIN_PART_SECONDS is dropped (kept when it is the only one).
    """
    if not split or duration <= CLIP_SECONDS:
        return [(0.0, min(duration, CLIP_SECONDS))]
    count = math.floor(duration / CLIP_SECONDS)
    windows = [(i * CLIP_SECONDS, CLIP_SECONDS) for i in range(count)]
    rest = duration - count * CLIP_SECONDS
    if rest >= MIN_PART_SECONDS:
        windows.append((count * CLIP_SECONDS, rest))
    return windows


def _prompt(source: VideoSource, part: str | None, prompts: dict[str, str], fallback: str) -> str:
    for key in ([f"{part}.npz"] if part else []) + [source.video_path.name, f"{source.stem}.npz"]:
        if key in prompts:
            return prompts[key]
    return fallback


def video_clips(source: VideoSource, settings: VideoSettings, prompts: dict[str, str], fallback_prompt: str,
                root: Path) -> tuple[list[VideoClip], list[tuple[str, str]]]:
    """The clips of one video (probed here: raises a `DatasetError` for a bad one) and its
    (code, text) warnings."""
    info = probe_video(source.video_path, root=root)
    warnings = [("video-differs", f"{source.video_path}: {w}") for w in info.warnings]
    if source.audio_path is None:
        if not info.has_audio:
            raise VideoError(source.video_path, "has no audio track and no clean recording beside it",
                             f"put the clip's recording next to it as {source.stem}.wav (or .flac)")
        warnings.append(("video-own-audio", f"{source.video_path}: " + OWN_TRACK_WARNING.format(stem=source.stem)))
    if source.mask_path is not None and source.mask_path.suffix.lower() != ".png":
        probe_video(source.mask_path, root=root)  # a per-frame mask is a video too: same checks
    windows = plan_windows(info.duration, settings.split)
    if not settings.split and info.duration > CLIP_SECONDS:
        warnings.append(("video-long", f"{source.video_path}: is {info.duration:.1f} s long; the first "
                         f"{CLIP_SECONDS:g} s are used (set `split = true` under [video] in dataset.toml "
                         "to train on every 8 s)"))
    clips = []
    for i, (start, seconds) in enumerate(windows):
        part = f"{source.stem}_part{i + 1:02d}" if len(windows) > 1 else None
        clips.append(VideoClip(stem=part or source.stem, video_path=source.video_path,
                               audio_path=source.audio_path, start=start, duration=seconds,
                               prompt=_prompt(source, part, prompts, fallback_prompt),
                               mask_path=source.mask_path, mask_strength=settings.mask_strength,
                               mask_clip=settings.mask_clip, mask_sync=settings.mask_sync, info=info))
    return clips, warnings


@dataclass
class VideoScan:
    """What `scan_videos` found: clips, blocking problems, (code, text) warnings."""

    clips: list[VideoClip]
    problems: list[DatasetError]
    warnings: list[tuple[str, str]]


def scan_videos(directory: Path | str, *, audio_suffixes: tuple[str, ...], npz_stems: set[str],
                prompts: dict[str, str], fallback_prompt: str, overrides: dict[str, Any] | None = None,
                check_audio=None) -> VideoScan:
    """Every video clip of `directory`: settings from dataset.toml `[video]` updated with the
    job's `overrides`, pairing, probing, windows. `check_audio(path, root)` checks a clean
    recording's header (raises a DatasetError). A bad video is one problem; the others go on."""
    directory = Path(directory)
    settings, problems = read_video_settings(directory)
    if overrides:
        values, bad = check_video_table(overrides, "the job's [video] table")
        settings = settings.updated(values)
        problems += bad
    sources, found, notes = find_videos(directory, audio_suffixes, npz_stems)
    out = VideoScan([], problems + found, [("video-has-npz", n) for n in notes])
    for source in sources:
        try:
            if source.audio_path is not None and check_audio is not None:
                check_audio(source.audio_path, directory)
            clips, warnings = video_clips(source, settings, prompts, fallback_prompt, directory)
        except DatasetError as err:
            out.problems.append(err)
            continue
        out.clips.extend(clips)
        out.warnings.extend(warnings)
    return out
