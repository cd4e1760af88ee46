"""Video frames exactly as ComfyUI's VHS "Load Video" gives them, decoding only what is used.

VHS (cv2 path, default settings) returns every decoded frame as RGB `uint8 / 255` in float32
and reports `loaded_fps = 1 / (1 / CAP_PROP_FPS)`. OpenCV's CAP_PROP_FPS is the stream's
average frame rate as a double (`num / den`), falling back to the stream's base (r_frame_rate)
and then to `1 / time_base`. PyAV's `frame.to_ndarray(format="rgb24")` equals VHS's frames bit
for bit on the goldens (the same FFmpeg swscale conversion), so this module uses PyAV alone.

Memory: `iter_frames` streams through the file and yields only the requested frame indices as
`uint8 (H, W, 3)` arrays, one at a time, and stops after the last one; a caller that resizes
each frame as it comes (see `selva_engine.video.extractor`) never holds more than one source
frame. The frame count comes from the container header when it declares one (mp4, mov) and
otherwise from counting packets (demuxing only, no decoding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from selva_engine.errors import DatasetError

__all__ = ["DecodeError", "StreamInfo", "cap_prop_fps", "count_decoded_frames", "decode_audio", "decode_frames", "iter_frames",
           "loaded_fps", "node_differences", "read_stream_info"]


class DecodeError(DatasetError):
    """A video could not be decoded; the message names the file, the problem and the fix."""

    code = "bad-video"

    def __init__(self, path: Path | str, problem: str,
                 fix: str = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") -> None:
        super().__init__(path, problem, fix)


@dataclass(frozen=True)
class StreamInfo:
    """What the node needs to know about a video before decoding it.

    `fps` is VHS's `loaded_fps` (float64), `frame_count` the number of frames VHS would return,
    `cap_prop_fps` OpenCV's CAP_PROP_FPS, `start_time` the video stream's first timestamp in
    seconds (VHS ignores it: frame 0 is the first decoded frame). `width` x `height` is the
    frame size after `rotation` (a phone's portrait video is turned upright, as OpenCV's
    CAP_PROP_ORIENTATION_AUTO does for VHS).
    """

    path: Path
    width: int
    height: int
    fps: float
    cap_prop_fps: float
    frame_count: int
    codec: str
    pix_fmt: str
    start_time: float
    frame_count_from_header: bool
    rotation: int = 0  # degrees clockwise applied to every frame (the display matrix, as OpenCV does)
    constant_rate: bool = True  # average rate == base rate (False: variable frame rate)

    @property
    def duration(self) -> float:
        """Seconds as the node sees them: frame_count / fps (float64)."""
        return self.frame_count / self.fps


def _open(path: Path):
    import av  # PyAV bundles FFmpeg in its wheel

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc)
        raise DecodeError(path, f"is not a video FFmpeg can read ({why})") from exc


def _video_stream(container, path: Path):
    if not container.streams.video:
        raise DecodeError(path, "has no video stream", "give a video file with a picture track")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def _rate(value: Fraction | None) -> float:
    if value is None or value.denominator == 0:
        return 0.0
    return float(value.numerator) / float(value.denominator)  # OpenCV's r2d: num / den as doubles


def cap_prop_fps(stream) -> float:
    """OpenCV's CAP_PROP_FPS for a PyAV video stream: avg_frame_rate, else r_frame_rate, else 1/time_base."""
    fps = _rate(stream.average_rate)
    if fps < 1e-6:
        fps = _rate(stream.base_rate)
    if fps < 1e-6 and stream.time_base:
        fps = 1.0 / _rate(stream.time_base)
    return fps


def loaded_fps(cap_fps: float) -> float:
    """VHS's `loaded_fps` for the default settings: `1 / (1 / CAP_PROP_FPS)` (29.970029970029966 for NTSC)."""
    return 1 / (1 / cap_fps)


def _count_packets(container, stream) -> int:
    n = 0
    for packet in container.demux(stream):
        if packet.size:
            n += 1
    return n


def read_stream_info(path: Path | str) -> StreamInfo:
    """Open `path` and read its video stream's header (no frames decoded). Raises DecodeError."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        cap = cap_prop_fps(stream)
        if not math.isfinite(cap) or cap <= 0:
            raise DecodeError(path, "declares no frame rate")
        frames = int(stream.frames or 0)
        from_header = frames > 0
        if not from_header:
            frames = _count_packets(container, stream)
        if frames <= 0:
            raise DecodeError(path, "has no video frames")
        ctx = stream.codec_context
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        codec, pix_fmt = str(ctx.name), str(ctx.pix_fmt or "")
        constant = _is_constant_rate(stream)
    height, width, rotation = _first_frame(path)
    if rotation in (90, 270):
        width, height = height, width
    return StreamInfo(path=path, width=int(width), height=int(height), fps=loaded_fps(cap), cap_prop_fps=cap,
                      frame_count=frames, codec=codec, pix_fmt=pix_fmt, start_time=start,
                      frame_count_from_header=from_header, rotation=rotation, constant_rate=constant)


def node_differences(info: StreamInfo) -> list[str]:
    """What a user should know about how this video's frames relate to ComfyUI's (warnings).

    Empty for the common case (constant rate, no rotation, sizes a multiple of 8).
    """
    notes = []
    if info.width % 8 or info.height % 8:
        notes.append(f"{info.path.name} is {info.width}x{info.height}, not a multiple of 8: VHS's default "
                     "'AnimateDiff' format would first resize it with Lanczos, so ComfyUI's features differ "
                     "slightly from these (re-encode to a multiple of 8 to match exactly)")
    if info.rotation:
        notes.append(f"{info.path.name} carries rotation metadata: frames are turned {info.rotation} degrees "
                     "clockwise, as VHS (OpenCV) does")
    if not info.constant_rate:
        notes.append(f"{info.path.name} has a variable frame rate: frames are taken in decode order at its "
                     f"average {info.fps:.3f} fps, as VHS does, so their timing can drift from the audio")
    return notes


def _clockwise(frame) -> int:
    """Clockwise degrees OpenCV turns a frame by (0, 90, 180, 270) from its display matrix."""
    angle = int(-round(getattr(frame, "rotation", 0) or 0)) % 360
    return angle if angle in (90, 180, 270) else 0


def _first_frame(path: Path) -> tuple[int, int, int]:
    """(height, width, clockwise rotation) of the first decoded frame; DecodeError if none decodes."""
    import av

    with _open(path) as container:
        try:
            frame = next(container.decode(_video_stream(container, path)), None)
        except av.error.FFmpegError as exc:
            raise DecodeError(path, f"its first frame does not decode ({exc})") from exc
        if frame is None:
            raise DecodeError(path, "has a video stream but no frame of it decodes")
        return int(frame.height), int(frame.width), _clockwise(frame)


def _orient(rgb: np.ndarray, rotation: int) -> np.ndarray:
    if rotation == 0:
        return rgb
    return np.ascontiguousarray(np.rot90(rgb, k={90: -1, 180: 2, 270: 1}[rotation]))


# Seek instead of decoding from the start only when the first wanted frame is this far in.
SEEK_MIN_FRAMES = 250


def _is_constant_rate(stream) -> bool:
    """Declared average rate == base rate: frame index = timestamp x fps holds (seeking is exact)."""
    return bool(stream.average_rate and stream.base_rate and stream.average_rate == stream.base_rate)


def _rgb(frame, rotate: bool) -> np.ndarray:
    """rgb24 (H, W, 3) uint8, turned upright by the display matrix when `rotate`."""
    rgb = frame.to_ndarray(format="rgb24")
    return _orient(rgb, _clockwise(frame)) if rotate else rgb


def _sequential(container, stream, path: Path, wanted: list[int], rotate: bool) -> Iterator[tuple[int, np.ndarray]]:
    import av

    pos, index = 0, -1
    try:
        for index, frame in enumerate(container.decode(stream)):
            if index == wanted[pos]:
                yield index, _rgb(frame, rotate)
                pos += 1
                if pos == len(wanted):
                    return
    except av.error.FFmpegError as exc:
        raise DecodeError(path, f"failed while decoding frame {index + 1} ({type(exc).__name__}: {exc})") from exc


def _seeked(container, stream, wanted: list[int], rotate: bool) -> Iterator[tuple[int, np.ndarray]] | None:
    """Seek to a keyframe before wanted[0] and number frames by timestamp; None if that is unsafe."""
    fps = cap_prop_fps(stream)
    tb = stream.time_base
    first_pts = stream.start_time or 0
    target = first_pts + int((max(wanted[0] - fps, 0) / fps) / tb)  # about 1 s before the first wanted frame
    container.seek(target, stream=stream, backward=True, any_frame=False)
    frames = container.decode(stream)
    first = next(frames, None)
    if first is None or first.pts is None:
        return None
    start_index = round(float((first.pts - first_pts) * tb) * fps)
    if start_index > wanted[0]:
        return None

    def gen() -> Iterator[tuple[int, np.ndarray]]:
        pos = 0
        for frame in _chain(first, frames):
            if frame.pts is None:
                raise DecodeError(container.name, "has frames without timestamps after a seek")
            index = round(float((frame.pts - first_pts) * tb) * fps)
            if wanted[pos] < index:
                raise DecodeError(container.name, f"frame {wanted[pos]} was skipped after a seek")
            if index == wanted[pos]:
                yield index, _rgb(frame, rotate)
                pos += 1
                if pos == len(wanted):
                    return

    return gen()


def _chain(first, rest):
    yield first
    yield from rest


def iter_frames(path: Path | str, indices: Iterable[int], *, seek: bool = True,
                rotate: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield `(index, rgb24 uint8 (H, W, 3))` for each wanted frame index, in increasing order.

    Index i is the i-th decoded frame (VHS's numbering). Decoding stops after the largest
    wanted index; frames that are not wanted are dropped as they are decoded. When the first
    wanted frame is far into a constant-rate stream (and `seek`), the decoder seeks to the
    keyframe before it instead of decoding from the start, numbering frames by timestamp. With
    `rotate`, frames are turned upright by the stream's display matrix (as OpenCV does). If
    the file ends early, the missing indices are simply not yielded (the caller checks).
    """
    path = Path(path)
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    if seek and wanted[0] >= SEEK_MIN_FRAMES:
        with _open(path) as container:
            stream = _video_stream(container, path)
            seeked = _seeked(container, stream, wanted, rotate) if _is_constant_rate(stream) else None
            if seeked is not None:
                yield from seeked
                return
    with _open(path) as container:  # from the start (a fresh demuxer, as VHS reads it)
        yield from _sequential(container, _video_stream(container, path), path, wanted, rotate)


def count_decoded_frames(path: Path | str) -> int:
    """How many frames really decode (VHS's T when a header's count is wrong); decodes them all,
    keeping none."""
    path = Path(path)
    with _open(path) as container:
        return sum(1 for _ in container.decode(_video_stream(container, path)))


def decode_frames(path: Path | str, indices: Iterable[int] | None = None) -> np.ndarray:
    """The wanted frames (all when `indices` is None) as VHS's IMAGE: float32 (T, H, W, 3) in [0, 1].

    Meant for short videos and tests; the extractor streams with `iter_frames` instead.
    """
    path = Path(path)
    if indices is None:
        indices = range(read_stream_info(path).frame_count)
    frames = [rgb for _, rgb in iter_frames(path, indices)]
    if not frames:
        raise DecodeError(path, "has no video frames")
    return np.stack(frames).astype(np.float32) / np.float32(255.0)


def decode_audio(path: Path | str) -> tuple[np.ndarray, int, float] | None:
    """The first audio stream, whole, as `(samples (C, n) float32, rate, start seconds)`, or None.

    Like `ffmpeg -i FILE -f f32le -` (what VHS's AUDIO holds): every decoded sample from the
    first one, planar float32, the stream's own rate and channels, no trimming or resampling.
    """
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks.append(planar_float(frame))
        except av.error.FFmpegError as exc:
            raise DecodeError(path, f"its audio track failed to decode ({exc})") from exc
    if not chunks or rate <= 0:
        return None
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate, start


def planar_float(frame) -> np.ndarray:
    """One decoded audio frame as (C, n) float32, whatever its sample format."""
    fmt = frame.format.name
    arr = frame.to_ndarray()
    channels = len(frame.layout.channels)
    if not frame.format.is_planar:
        arr = arr.reshape(-1, channels).T
    if fmt.startswith("s16"):
        return arr.astype(np.float32) / np.float32(32768.0)
    if fmt.startswith("s32"):
        return arr.astype(np.float32) / np.float32(2147483648.0)
    if fmt.startswith("u8"):
        return (arr.astype(np.float32) - 128.0) / np.float32(128.0)
    return arr.astype(np.float32, copy=False)
