"""Tiny videos for the dataset tests, made at test time with PyAV (nothing binary committed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def _frame(i: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1) + 9 * i) % 256, (y * 255 // max(height - 1, 1)) % 256,
                    np.full_like(x, (30 * i) % 256)], axis=-1).astype(np.uint8)
    bx = (4 * i) % max(width - 8, 1)
    img[height // 3:height // 3 + 8, bx:bx + 8] = 255
    return img


def make_video(path: Path, *, seconds: float = 1.0, fps: int = 10, width: int = 64, height: int = 48,
               audio_rate: int = 0, channels: int = 1, tone: float = 440.0, pix_fmt: str = "yuv420p",
               rotation: int = 0, video_offset: float = 0.0, vfr: bool = False) -> Path:
    """A `seconds`-long video at `fps` (libx264, or ffv1 for 10-bit), optionally with a sine AAC track.

    `video_offset` delays the video stream's first timestamp (like `ffmpeg -itsoffset`), `vfr`
    doubles every other frame's duration, `rotation` writes display-rotation metadata.
    """
    import av

    frames = max(1, round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": "20", "preset": "ultrafast"}
        if rotation:
            stream.set_display_rotation(rotation)
        astream = _tone_stream(out, audio_rate, channels) if audio_rate else None
        tb = Fraction(1, fps * 2)
        stream.time_base = tb
        pts = round(video_offset / tb)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(_frame(i, height, width), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = pts, tb
            pts += (4 if vfr and i % 2 else 2)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            _write_tone(out, astream, tone, seconds)
    return path


def _tone_stream(out, rate: int, channels: int):
    return out.add_stream("aac", rate=rate, layout="mono" if channels == 1 else "stereo")


def _write_tone(out, astream, tone: float, seconds: float) -> None:
    import av

    rate, layout = astream.codec_context.sample_rate, astream.codec_context.layout.name
    channels = astream.codec_context.channels
    t = np.arange(int(seconds * rate)) / rate
    wave = np.stack([0.3 * np.sin(2 * np.pi * tone * (c + 1) * t) for c in range(channels)]).astype(np.float32)
    for lo in range(0, wave.shape[1], 1024):
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[:, lo:lo + 1024]), format="fltp",
                                           layout=layout)
        frame.sample_rate, frame.pts = rate, lo
        for packet in astream.encode(frame):
            out.mux(packet)
    for packet in astream.encode():
        out.mux(packet)
