"""mux_audio: the video stream is copied packet for packet, the audio is a new AAC stream of
the waveform's length; videos are made here with PyAV."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from selva_engine.video.mux import MuxError, mux_audio


def make_video(path, *, seconds: float = 1.0, fps: int = 25, size=(64, 48), codec="libx264",
               with_audio: bool = False):
    """A small test video: a moving gradient (and a 440 Hz tone when `with_audio`)."""
    with av.open(str(path), "w") as c:
        v = c.add_stream(codec, rate=fps)
        v.width, v.height, v.pix_fmt = size[0], size[1], "yuv420p"
        a = c.add_stream("aac", rate=48000, layout="mono") if with_audio else None
        n = int(seconds * fps)
        for i in range(n):
            img = np.zeros((size[1], size[0], 3), np.uint8)
            img[..., 0] = (np.arange(size[0]) * 4 + i * 9) % 256
            img[..., 1] = i * 10 % 256
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode(None):
            c.mux(p)
        if a is not None:
            t = np.arange(int(seconds * 48000)) / 48000
            tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
            for s in range(0, tone.shape[1], 1024):
                fr = av.AudioFrame.from_ndarray(tone[:, s:s + 1024], format="fltp", layout="mono")
                fr.sample_rate, fr.pts, fr.time_base = 48000, s, Fraction(1, 48000)
                for p in a.encode(fr):
                    c.mux(p)
            for p in a.encode(None):
                c.mux(p)
    return path


def _video_packets(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [(bytes(p), p.pts, p.is_keyframe) for p in c.demux(s) if p.size], \
            s.codec_context.name, float(s.average_rate)


def _decoded_audio(path):
    with av.open(str(path)) as c:
        assert len(c.streams.audio) == 1
        s = c.streams.audio[0]
        chunks = [f.to_ndarray() for f in c.decode(s)]
        return np.concatenate(chunks, axis=1), s.codec_context.name, s.rate


@pytest.mark.parametrize(("source", "suffix"), [(".mp4", ".mp4"), (".mp4", ".mkv"), (".mkv", ".mp4")])
def test_video_packets_are_copied_and_the_audio_has_its_length(tmp_path, source, suffix):
    src = make_video(tmp_path / f"in{source}", with_audio=True)
    rate = 16000
    t = np.arange(int(1.024 * rate)) / rate
    wave = (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32)
    out = mux_audio(src, wave, rate, tmp_path / f"out{suffix}")
    packets_in, codec_in, fps_in = _video_packets(src)
    packets_out, codec_out, fps_out = _video_packets(out)
    # same bytes, same order, same keyframes: copied, not re-encoded
    assert [(b, k) for b, _, k in packets_out] == [(b, k) for b, _, k in packets_in]
    assert codec_out == codec_in and fps_out == pytest.approx(fps_in)
    with av.open(str(out)) as c:  # it plays: every frame decodes, the picture is the source's
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(src)) as c:
        assert np.array_equal(np.stack(frames), np.stack([f.to_ndarray(format="rgb24")
                                                          for f in c.decode(video=0)]))
    assert len(frames) == 25
    got, acodec, arate = _decoded_audio(out)  # the source's own tone is dropped
    assert acodec == "aac" and arate == rate
    assert got.shape[0] == 1 and abs(got.shape[1] - wave.size) <= 2048  # AAC frame padding
    # the decoded sound is the waveform (AAC delay and loss aside): the 330 Hz tone dominates
    spectrum = np.abs(np.fft.rfft(got[0, 2048:2048 + 8192]))
    assert np.argmax(spectrum) * rate / 8192 == pytest.approx(330, abs=3)


def test_stereo_and_errors(tmp_path):
    src = make_video(tmp_path / "in.mp4", seconds=0.4)
    out = mux_audio(src, np.zeros((2, 4000), np.float32) + 0.1, 44100, tmp_path / "s.mov")
    got, _, _ = _decoded_audio(out)
    assert got.shape[0] == 2
    with pytest.raises(MuxError, match=r"x\.avi: cannot write a video with suffix '\.avi'"):
        mux_audio(src, np.zeros(100), 16000, tmp_path / "x.avi")
    with pytest.raises(MuxError, match="NaN"):
        mux_audio(src, np.full(100, np.nan), 16000, tmp_path / "n.mp4")
    with pytest.raises(MuxError, match="shape"):
        mux_audio(src, np.zeros((3, 100)), 16000, tmp_path / "c.mp4")
    audio_only = tmp_path / "a.m4a"
    with av.open(str(audio_only), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=16000, layout="mono")
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        for p in list(s.encode(fr)) + list(s.encode(None)):
            c.mux(p)
    with pytest.raises(MuxError, match="no video stream"):
        mux_audio(audio_only, np.zeros(100), 16000, tmp_path / "v.mp4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.m4a", "in.mp4", "s.mov"]
