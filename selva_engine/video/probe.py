"""A video file checked before anything decodes it, and its audio track aligned to the frames.

`probe_video` opens a file of a dataset (a regular file inside `root`, never a link out of it),
reads the container and video-stream headers with PyAV, refuses what cannot be a clip (no
video stream, no frames, absurd declared dimensions, frame counts or lengths, a file FFmpeg
cannot read such as a text file named `.mp4`) and only then decodes one frame to prove the
stream decodes. Each refusal is one `VideoError` naming the file, the problem and the fix.

Odd but valid videos are accepted with `VideoInfo.warnings` saying what differs from the
frames ComfyUI's VHS "Load Video" node would give: sizes that are not a multiple of 8 (VHS's
default format rescales those with Lanczos; we decode at the stored size, as its cv2 path
does for multiples of 8), a variable frame
rate (frames are chosen by index at the average rate, as VHS does), fewer than 16 sync frames;
rotation metadata (the decoder turns frames upright as VHS/OpenCV does) is said too.

Timing (golden/video/README.md section 10, `e2e_d`): VHS's frame 0 is the first decoded frame,
at file time `video_start`, while a plain audio decode starts at `audio_start`. Seconds given
to `read_video_audio` are on the frames' clock (0 = frame 0), so the audio is trimmed (or
zero-padded) to line up with the frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from selva_engine.errors import DatasetError, open_error
from selva_engine.io import open_regular
from selva_engine.video.decode import cap_prop_fps, planar_float

__all__ = ["VIDEO_SUFFIXES", "VideoError", "VideoInfo", "VideoLimits", "output_stems", "probe_video",
           "read_video_audio"]

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".webm", ".avi")
_REENCODE = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p -c:a aac OUT.mp4`"
SYNC_MIN_FRAMES = 16  # TextSynch's window: shorter clips repeat their last sync frame


class VideoError(DatasetError):
    """A video file of a dataset cannot be used as a clip: `<path>: <problem> (fix: <fix>)`."""

    code = "bad-video"

    def __init__(self, path: Path | str, problem: str, fix: str = _REENCODE) -> None:
        super().__init__(path, problem, fix)


@dataclass(frozen=True)
class VideoLimits:
    """What a clip's header may declare before it is refused unread (checked before decoding).

    Defaults allow 8K video and a few hours; a header beyond them is broken or hostile.
    """

    max_side: int = 8192
    max_pixels: int = 8192 * 8192
    max_frames: int = 2_000_000
    max_seconds: float = 6 * 3600.0
    max_fps: float = 1000.0


@dataclass(frozen=True)
class VideoInfo:
    """A video's header facts, as VHS's Load Video would see the file.

    `fps` is VHS's `loaded_fps` (`1 / (1 / CAP_PROP_FPS)`), `frame_count` the frames it would
    return, `duration = frame_count / fps`; `video_start` / `audio_start` are the streams' first
    timestamps in file seconds; `rotation` the clockwise turn OpenCV applies (0, 90, 180, 270).
    `warnings` say what differs from VHS for this file (empty for an ordinary clip).
    """

    path: Path
    width: int
    height: int
    fps: float
    frame_count: int
    duration: float
    codec: str
    pix_fmt: str
    rotation: int
    has_audio: bool
    audio_rate: int
    audio_channels: int
    video_start: float
    audio_start: float
    variable_rate: bool = False
    warnings: tuple[str, ...] = field(default=())


def _start(stream) -> float:
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _open_container(path: Path, f: BinaryIO):
    import av  # PyAV: FFmpeg inside its wheel

    try:
        return av.open(f, metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise VideoError(path, f"is not a video file FFmpeg can read ({_reason(exc)})",
                         "give a real video file (mp4, mov, mkv, webm, avi), or re-encode it with "
                         "`ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") from exc


def _reason(exc: BaseException) -> str:
    """FFmpeg's own words for `exc` ("Invalid data found when processing input"), no errno or path."""
    text = getattr(exc, "strerror", None) or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    return str(text)[:160]


def _count_packets(container, stream, limit: int) -> int:
    n = 0
    for packet in container.demux(stream):
        if packet.size:
            n += 1
            if n > limit:
                break
    return n


def _check_dimensions(path: Path, width: int, height: int, limits: VideoLimits) -> None:
    if width <= 0 or height <= 0:
        raise VideoError(path, f"declares a {width}x{height} picture (no image size)")
    if max(width, height) > limits.max_side or width * height > limits.max_pixels:
        raise VideoError(path, f"declares a {width}x{height} picture, beyond the {limits.max_side} px "
                         "a clip may have (a broken or hostile header); it is not decoded",
                         "scale it down, e.g. `ffmpeg -i IN -vf scale=1280:-2 OUT.mp4`")


def _frame_count(path: Path, container, stream, fps: float, limits: VideoLimits) -> int:
    """The declared frame count (checked against the limits), else counted from packets."""
    declared = int(stream.frames or 0)
    seconds = float(stream.duration * stream.time_base) if stream.duration else (
        container.duration / 1e6 if container.duration else 0.0)
    if declared > limits.max_frames or seconds > limits.max_seconds:
        what = f"{declared:,} frames" if declared > limits.max_frames else f"{seconds / 3600:.1f} hours"
        raise VideoError(path, f"declares {what}, beyond what a clip may hold ({limits.max_frames:,} frames, "
                         f"{limits.max_seconds / 3600:g} hours); it is not decoded",
                         "cut the part you want, e.g. `ffmpeg -ss 0 -t 60 -i IN -c copy OUT.mp4`")
    if declared > 0:
        return declared
    counted = _count_packets(container, stream, limits.max_frames)
    if counted > limits.max_frames:
        raise VideoError(path, f"holds more than {limits.max_frames:,} frames; it is not decoded",
                         "cut the part you want, e.g. `ffmpeg -ss 0 -t 60 -i IN -c copy OUT.mp4`")
    return counted


def _first_frame(path: Path, f: BinaryIO):
    """Decode the first video frame of a fresh demuxer (proves the stream decodes)."""
    import av

    f.seek(0)
    with _open_container(path, f) as container:
        stream = container.streams.video[0]
        try:
            for frame in container.decode(stream):
                frame.to_ndarray(format="rgb24")
                return frame
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"its video stream does not decode ({_reason(exc)})") from exc
    raise VideoError(path, "its video stream holds no decodable frame")


def _warnings(info: VideoInfo) -> tuple[str, ...]:
    out: list[str] = []
    if info.width % 8 or info.height % 8:
        out.append(f"{info.width}x{info.height} is not a multiple of 8: ComfyUI's VHS Load Video "
                   "(default format) would first rescale it to a multiple of 8 (Lanczos), so its features differ "
                   "slightly; re-encode to a multiple of 8 to match exactly")
    if info.rotation:
        out.append(f"carries rotation metadata: frames are turned {info.rotation}° clockwise, as VHS "
                   "(OpenCV) does")
    if info.variable_rate:
        out.append(f"has a variable frame rate: frames are chosen by index at the average {info.fps:.3f} fps, "
                   "as VHS does, so timing can drift from the audio; re-encode at a constant rate to avoid it")
    if int(info.duration * 25) < SYNC_MIN_FRAMES:
        out.append(f"is {info.duration:.2f} s long (< 0.64 s): the last frame is repeated to fill the "
                   "16-frame sync window, as the node does")
    return tuple(out)


def _read_header(path: Path, f: BinaryIO, limits: VideoLimits) -> dict:
    with _open_container(path, f) as container:
        if not container.streams.video:
            raise VideoError(path, "has no video stream (an audio-only or data file)",
                             "give a video file with a picture track, or put the audio in a .wav clip")
        stream = container.streams.video[0]
        ctx = stream.codec_context
        _check_dimensions(path, int(ctx.width or 0), int(ctx.height or 0), limits)
        cap = cap_prop_fps(stream)
        if not math.isfinite(cap) or cap <= 0 or cap > limits.max_fps:
            raise VideoError(path, f"declares no usable frame rate ({cap:g} fps)")
        frames = _frame_count(path, container, stream, cap, limits)
        if frames <= 0:
            raise VideoError(path, "has no video frames", "give a video that holds at least one frame")
        audio = container.streams.audio[0] if container.streams.audio else None
        actx = audio.codec_context if audio is not None else None
        variable = bool(stream.average_rate and stream.base_rate and stream.average_rate != stream.base_rate)
        return dict(width=int(ctx.width), height=int(ctx.height), fps=1 / (1 / cap), frame_count=frames,
                    codec=str(ctx.name), pix_fmt=str(ctx.pix_fmt or ""), variable_rate=variable,
                    has_audio=audio is not None, video_start=_start(stream),
                    audio_rate=int(actx.sample_rate or 0) if actx else 0,
                    audio_channels=int(actx.channels or 0) if actx else 0,
                    audio_start=_start(audio) if audio is not None else 0.0)


def probe_video(path: Path | str, *, root: Path | str | None = None,
                limits: VideoLimits = VideoLimits(), folder: str = "dataset directory") -> VideoInfo:
    """Check one video and return its `VideoInfo`; raise one `DatasetError` when it is no clip.

    The file must be a regular file (inside `root` when given: a link out of it is refused
    unread). Headers are checked against `limits` before any frame is decoded; then the first
    frame is decoded. Raises `VideoError` (or the `DatasetError` of `open_error`, naming
    `root` as `folder`).
    """
    path = Path(path)
    try:
        f = open_regular(path, root)
    except OSError as exc:
        raise open_error(path, exc, folder) from exc
    with f:
        head = _read_header(path, f, limits)
        first = _first_frame(path, f)
    rotation = int(-round(getattr(first, "rotation", 0) or 0)) % 360  # clockwise, as OpenCV turns it
    info = VideoInfo(path=path, duration=head["frame_count"] / head["fps"], rotation=rotation, **head)
    return VideoInfo(**{**info.__dict__, "warnings": _warnings(info)})


def read_video_audio(path: Path | str, *, start: float, duration: float,
                     root: Path | str | None = None) -> tuple[np.ndarray, int]:
    """The video's own audio for `[start, start + duration)` seconds of the frames' clock.

    Returns `(samples (C, n) float32, rate)` at the track's native rate, n = round(duration *
    rate): second 0 is VHS's frame 0 (file time `video_start`), so a video stream that starts
    after the audio is trimmed to line up; time the track does not cover is silence. Only the
    window is kept in memory (frames before it are decoded and dropped). Raises `VideoError`
    when the file has no audio track or it does not decode.
    """
    import av

    path = Path(path)
    try:
        f = open_regular(path, root)
    except OSError as exc:
        raise open_error(path, exc) from exc
    with f, _open_container(path, f) as container:
        if not container.streams.audio:
            raise VideoError(path, "has no audio track and no clean recording beside it",
                             f"put the clip's recording next to it as {path.stem}.wav (or .flac)")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or 0)
        if rate <= 0:
            raise VideoError(path, "its audio track declares no sample rate")
        video_start = _start(container.streams.video[0]) if container.streams.video else 0.0
        first = round((video_start + start - _start(stream)) * rate)  # window start, in track samples
        n = max(0, round(duration * rate))
        out = np.zeros((max(1, int(stream.codec_context.channels or 1)), n), np.float32)
        try:
            _fill_window(container, stream, out, first)
        except av.error.FFmpegError as exc:
            raise VideoError(path, f"its audio track does not decode ({_reason(exc)})") from exc
    return out, rate


def _fill_window(container, stream, out: np.ndarray, first: int) -> None:
    """Decode the track from its start, copying samples [first, first + n) into `out`."""
    n = out.shape[1]
    pos = 0  # track sample index of the next decoded sample
    for frame in container.decode(stream):
        if pos >= first + n:
            return
        block = planar_float(frame)
        lo, hi = max(first, pos), min(first + n, pos + block.shape[1])
        if hi > lo:
            rows = min(out.shape[0], block.shape[0])
            out[:rows, lo - first : hi - first] = block[:rows, lo - pos : hi - pos]
        pos += block.shape[1]


def output_stems(paths: list[Path]) -> list[str]:
    """The output stem of each video of `paths` (in order): its stem, with `_2`, `_3` ...
    appended where stems repeat (`street.mov`, `street.mp4` -> `street`, `street_2`), so the
    renders of two videos never overwrite each other."""
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        out.append(path.stem if seen[path.stem] == 1 else f"{path.stem}_{seen[path.stem]}")
    return out
