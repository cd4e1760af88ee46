"""The original video with generated sound: `mux_audio` copies the video stream's packets
(no re-encoding, so the picture is bit-identical) into a new container with the audio encoded
as AAC, the codec MP4/MOV/MKV players all take.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from selva_engine.io import atomic_write

__all__ = ["CONTAINERS", "MuxError", "mux_audio"]

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska"}
AAC_BITRATE = 192_000  # bits/s: transparent for generated mono/stereo sound
_CHUNK = 1024  # samples per AAC frame


class MuxError(ValueError):
    """A file that cannot be muxed; the message names it, the problem and the fix."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path


def _as_channels(audio: np.ndarray, out: Path) -> np.ndarray:
    """(n,) or (C, n) float audio -> (C, n) float32 in [-1, 1], C in {1, 2}."""
    a = np.asarray(audio, dtype=np.float32)
    if a.ndim == 1:
        a = a[None]
    if a.ndim != 2 or a.shape[0] not in (1, 2) or a.shape[1] == 0:
        raise MuxError(out, f"the audio must be (samples,) or (1 or 2, samples), got shape "
                       f"{tuple(np.shape(audio))}", "pass a mono or stereo waveform")
    if not np.isfinite(a).all():
        raise MuxError(out, "the audio holds NaN or infinite samples", "regenerate the audio")
    return np.ascontiguousarray(np.clip(a, -1.0, 1.0))


def _encode_audio(container, audio: np.ndarray, rate: int) -> None:
    """Encode (C, n) float32 planar audio as AAC into a new stream of `container`."""
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    stream = container.add_stream("aac", rate=rate, layout=layout)
    stream.bit_rate = AAC_BITRATE
    for start in range(0, audio.shape[1], _CHUNK):
        frame = av.AudioFrame.from_ndarray(audio[:, start:start + _CHUNK], format="fltp",
                                           layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _remux(video_in: Path, audio: np.ndarray, rate: int, fmt: str, f: BinaryIO) -> None:
    with av.open(str(video_in)) as src:
        if not src.streams.video:
            raise MuxError(video_in, "the file has no video stream", "pass a video file")
        v_in = src.streams.video[0]
        with av.open(f, "w", format=fmt) as dst:
            v_out = dst.add_stream_from_template(v_in)
            _encode_audio(dst, audio, rate)
            for packet in src.demux(v_in):
                if packet.size == 0:  # the demuxer's end-of-stream flush packet
                    continue
                packet.stream = v_out
                dst.mux(packet)


def mux_audio(video_in: Path | str, audio: np.ndarray, rate: int, out: Path | str) -> Path:
    """Write `out`: the video stream of `video_in` copied packet for packet, plus `audio`
    ((samples,) or (channels, samples) float in [-1, 1] at `rate` Hz) as an AAC stream.

    The container follows out's suffix (.mp4/.m4v/.mov/.mkv); the input's own audio streams
    are dropped. Written atomically (a failed mux leaves no partial file). Raises MuxError
    for an unknown suffix, a file without video, or a codec the container cannot hold, and
    av.FFmpegError when FFmpeg cannot read `video_in`. Returns `out`.
    """
    video_in, out = Path(video_in), Path(out)
    fmt = CONTAINERS.get(out.suffix.lower())
    if fmt is None:
        raise MuxError(out, f"cannot write a video with suffix {out.suffix or '(none)'!r}",
                       f"name the output {' / '.join(CONTAINERS)}")
    if int(rate) <= 0:
        raise MuxError(out, f"the audio rate must be positive (got {rate})", "pass the rate in Hz")
    samples = _as_channels(audio, out)
    try:
        return atomic_write(out, lambda f: _remux(video_in, samples, int(rate), fmt, f))
    except ValueError as exc:  # PyAV: the container does not take the video codec
        if isinstance(exc, MuxError):
            raise
        raise MuxError(out, f"the video stream of {video_in} cannot go into a {fmt} file ({exc})",
                       "use the suffix of the input video (e.g. .mkv)") from exc
