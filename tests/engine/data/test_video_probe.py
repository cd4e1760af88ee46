"""probe_video / read_video_audio: bad videos get one readable error each, odd ones a warning."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from selva_engine.errors import DatasetError, LinkOutsideError
from selva_engine.video.probe import VideoError, VideoLimits, probe_video, read_video_audio
from tests.conftest import golden_path
from tests.video_files import make_video


def test_plain_video_header(tmp_path: Path) -> None:
    info = probe_video(make_video(tmp_path / "a.mp4", seconds=1.0, fps=10, audio_rate=16000), root=tmp_path)
    assert (info.width, info.height, info.frame_count, info.fps) == (64, 48, 10, 10.0)
    assert info.duration == pytest.approx(1.0)
    assert info.has_audio and info.audio_rate == 16000 and info.audio_channels == 1
    assert info.codec == "h264" and info.pix_fmt == "yuv420p" and info.rotation == 0
    assert info.warnings == ()


def _err(path: Path, root: Path | None = None, **kw) -> DatasetError:
    with pytest.raises(DatasetError) as e:
        probe_video(path, root=root, **kw)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "(fix: " in msg and "Traceback" not in msg
    return e.value


def test_text_file_named_mp4(tmp_path: Path) -> None:
    p = tmp_path / "notes.mp4"
    p.write_text("this is not a video\n" * 20)
    err = _err(p)
    assert isinstance(err, VideoError) and "not a video file" in err.problem


def test_no_video_stream(tmp_path: Path) -> None:
    import av

    p = tmp_path / "sound.mp4"
    with av.open(str(p), "w") as out:
        s = out.add_stream("aac", rate=8000, layout="mono")
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate = 8000
        for pkt in list(s.encode(f)) + list(s.encode()):
            out.mux(pkt)
    assert "no video stream" in _err(p).problem


def test_zero_frames(tmp_path: Path) -> None:
    import av

    p = tmp_path / "empty.avi"
    with av.open(str(p), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()
    assert "no video frames" in _err(p).problem


def _raw_avi(path: Path, frames: int = 3) -> Path:
    import av

    with av.open(str(path), "w") as out:
        s = out.add_stream("rawvideo", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "bgr24"
        for _ in range(frames):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="bgr24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)
    return path


@pytest.mark.parametrize("size", [(9000, 9000), (60000, 60000)])
def test_absurd_dimensions_refused_before_decoding(tmp_path: Path, size: tuple[int, int]) -> None:
    """A raw AVI whose header claims a huge picture (the data holds 64x48): refused unread."""
    data = bytearray(_raw_avi(tmp_path / "ok.avi").read_bytes())
    i = data.find(b"strf")  # BITMAPINFOHEADER: size, width, height
    struct.pack_into("<ii", data, i + 12, *size)
    bad = tmp_path / "huge.avi"
    bad.write_bytes(bytes(data))
    err = _err(bad)
    assert "picture" in err.problem and ("beyond" in err.problem or "no image size" in err.problem)


def test_limits_refuse_dimensions_and_frames(tmp_path: Path) -> None:
    p = make_video(tmp_path / "a.mp4", seconds=2.0, fps=10)
    assert "picture" in _err(p, limits=VideoLimits(max_side=32)).problem
    assert "frames" in _err(p, limits=VideoLimits(max_frames=5)).problem


def test_link_out_of_root(tmp_path: Path) -> None:
    outside = make_video(tmp_path / "outside.mp4", seconds=0.3)
    root = tmp_path / "ds"
    root.mkdir()
    os.symlink(outside, root / "clip.mp4")
    assert isinstance(_err(root / "clip.mp4", root=root), LinkOutsideError)


def test_truncated_video_not_decodable(tmp_path: Path) -> None:
    src = make_video(tmp_path / "ok.mkv", seconds=1.0)
    bad = tmp_path / "cut.mkv"
    bad.write_bytes(src.read_bytes()[:300])
    _err(bad)


@pytest.mark.parametrize(("kw", "needle"), [
    (dict(width=60, height=44), "multiple of 8"),
    (dict(rotation=90), "rotation"),
    (dict(vfr=True), "variable frame rate"),
    (dict(seconds=0.3), "repeated"),
])
def test_odd_videos_accepted_with_a_warning(tmp_path: Path, kw: dict, needle: str) -> None:
    args = dict(seconds=1.0, fps=10) | kw
    info = probe_video(make_video(tmp_path / "odd.mp4", **args))
    assert any(needle in w for w in info.warnings), info.warnings
    assert info.frame_count >= 1


def test_ten_bit_video_decodes(tmp_path: Path) -> None:
    info = probe_video(make_video(tmp_path / "hi.mkv", seconds=0.5, pix_fmt="yuv420p10le"))
    assert info.pix_fmt == "yuv420p10le" and info.frame_count == 5


def test_audio_window_is_aligned_to_frames(tmp_path: Path) -> None:
    plain = make_video(tmp_path / "p.mp4", seconds=2.0, audio_rate=16000)
    late = make_video(tmp_path / "l.mp4", seconds=2.0, audio_rate=16000, video_offset=0.5)
    info = probe_video(late)
    assert info.video_start == pytest.approx(0.5) and info.audio_start == pytest.approx(0.0)
    a, rate = read_video_audio(plain, start=0.5, duration=1.0)
    b, _ = read_video_audio(late, start=0.0, duration=1.0)
    assert rate == 16000 and a.shape == b.shape == (1, 16000)
    np.testing.assert_allclose(a, b, atol=1e-6)  # the late video's frame 0 is file time 0.5
    tail, _ = read_video_audio(plain, start=1.5, duration=1.0)  # past the track: silence
    assert np.abs(tail[:, 9000:]).max() == 0.0 and np.abs(tail[:, :6000]).max() > 0.1


def test_video_without_audio_track(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match="no audio track"):
        read_video_audio(make_video(tmp_path / "mute.mp4"), start=0.0, duration=1.0)


def test_golden_e2e_d_offset_trimmed() -> None:
    root = golden_path() / "video" / "e2e_d"
    if not (root / "vid_d.mp4").is_file():
        pytest.skip(f"video goldens not found under {root} (set SELVA_GOLDEN_DIR)")
    info = probe_video(root / "vid_d.mp4")
    assert info.fps == 30.0 and info.frame_count == 75 and info.video_start == 0.5
    with np.load(root / "e2e_d.audio.npz", allow_pickle=False) as z:
        full, rate = z["output.audio.samples"], int(z["output.audio.sample_rate"])
    got, r = read_video_audio(root / "vid_d.mp4", start=0.0, duration=2.0)
    assert r == rate == 44100
    np.testing.assert_allclose(got, full[:, 22050:22050 + 88200], atol=1e-6)
