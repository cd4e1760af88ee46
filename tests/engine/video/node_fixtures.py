"""Videos for the node-pipeline tests, made at test time with PyAV (nothing binary committed)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def frame_pattern(i: int, height: int, width: int) -> np.ndarray:
    """Frame i: a moving gradient with a bright box, uint8 (H, W, 3); frames differ from each other."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 255 // max(width - 1, 1) + 7 * i) % 256, (y * 255 // max(height - 1, 1)) % 256,
                    np.full_like(x, (40 * i) % 256)], axis=-1).astype(np.uint8)
    bx = (5 * i) % max(width - 16, 1)
    img[height // 4:height // 4 + 16, bx:bx + 16] = 255
    return img


def write_video(path: Path, *, frames: int = 30, rate: str | int = 25, width: int = 64, height: int = 48,
                codec: str = "libx264", audio_rate: int = 0, gop: int = 12) -> Path:
    """A short video (`frames` frames at `rate`, yuv420p), optionally with a 440 Hz mono AAC track."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=Fraction(rate))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "ultrafast"}
        astream = out.add_stream("aac", rate=audio_rate, layout="mono") if audio_rate else None
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
        if astream is not None:
            n = int(frames / float(Fraction(rate)) * audio_rate)
            t = np.arange(n) / audio_rate
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
            frame.sample_rate = audio_rate
            for packet in astream.encode(frame):
                out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return path
