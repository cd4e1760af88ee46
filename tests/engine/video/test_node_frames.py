"""Decode and frames as the node gets them: the frame_select / resize goldens and the e2e inputs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from selva_engine.conformance.runner import main
from selva_engine.video import frames as fr
from selva_engine.video.decode import DecodeError, decode_frames, iter_frames, read_stream_info
from selva_engine.video.extractor import prepare_frames
from tests.engine.video.node_fixtures import write_video

E2E = ("e2e_a", "e2e_b", "e2e_b_mask_static", "e2e_b_mask_perframe", "e2e_c", "e2e_d")


def _sha(x: torch.Tensor | np.ndarray) -> str:
    arr = x.contiguous().numpy() if isinstance(x, torch.Tensor) else np.ascontiguousarray(x)
    return hashlib.sha256(arr.astype(np.float32).tobytes()).hexdigest()


def _e2e(golden_dir, run):
    folder = golden_dir / "video" / run
    sidecar = json.loads((folder / f"{run}.json").read_text())
    with np.load(folder / sidecar["debug_file"], allow_pickle=False) as z:
        debug = {k: z[k] for k in z.files}
    video = next(p for p in [folder / sidecar["video_file"], *golden_dir.glob(f"video/*/{sidecar['video_file']}")]
                 if p.is_file())
    return sidecar, debug, video


def test_frame_select_and_resize_goldens_pass(golden_dir, capsys):
    assert main([str(golden_dir / "video"), "--only", "frame_select,resize"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == "2 passed, 0 failed"


@pytest.mark.parametrize("run", ("e2e_a", "e2e_b", "e2e_c", "e2e_d"))
def test_decoded_frames_and_fps_equal_vhs(golden_dir, run):
    sidecar, _, video = _e2e(golden_dir, run)
    info = read_stream_info(video)
    vhs = sidecar["video"]["vhs_video_info"]
    assert info.fps == vhs["loaded_fps"] == sidecar["fps_used"]  # 29.970029970029966 for NTSC, not 30000/1001
    assert info.cap_prop_fps == vhs["source_fps"]
    assert info.frame_count == vhs["loaded_frame_count"]
    assert (info.width, info.height) == (vhs["loaded_width"], vhs["loaded_height"])
    assert _sha(decode_frames(video)) == sidecar["video"]["vhs_frames_float32_sha256"]


@pytest.mark.parametrize("run", E2E)
def test_model_inputs_equal_the_nodes_bit_for_bit(golden_dir, run):
    sidecar, debug, video = _e2e(golden_dir, run)
    mask = debug.get("input.mask")
    p = prepare_frames(video, duration=float(debug["input.duration_widget"]), mask=mask,
                       mask_strength=float(debug["input.mask_strength"]) if mask is not None else 1.0,
                       keep_resized=True)
    assert p.plan.duration == sidecar["duration_resolved"]
    assert np.array_equal(p.plan.clip_indices, debug["debug.clip_indices"])
    assert np.array_equal(p.plan.sync_indices, debug["debug.sync_indices"])
    assert p.sync.shape[0] == sidecar["num_sync_frames_after_pad"] and p.plan.num_segments == sidecar["num_segments"]
    sha = sidecar["sha256"]
    assert _sha(p.clip_resized) == sha["clip_resized_float32"]
    assert _sha(p.sync_resized) == sha["sync_resized_float32"]
    assert _sha(fr.clip_normalize(p.clip)) == sha["clip_model_input"]
    assert _sha(fr.sync_normalize(p.sync)) == sha["sync_model_input"]


def test_a_mask_changes_only_what_it_should(golden_dir):
    _, debug, video = _e2e(golden_dir, "e2e_b_mask_static")
    plain = prepare_frames(video, keep_resized=True)
    masked = prepare_frames(video, mask=debug["input.mask"], mask_strength=0.5, mask_clip=False)
    assert torch.equal(masked.clip, plain.clip)  # mask_clip off: CLIP frames untouched
    assert not torch.equal(masked.sync, plain.sync)
    grey = prepare_frames(video, mask=np.zeros((1, 8, 8), np.float32), mask_strength=1.0)
    assert torch.allclose(grey.clip, torch.full_like(grey.clip, 0.5))  # background -> grey 0.5, not 0


def test_the_index_formula_is_the_float_one_not_the_exact_floor():
    plan = fr.plan_frames(50, 25.0)
    assert plan.sync_indices[29] == 28  # int(29 / 25 * 25) == 28 in float64
    assert fr.plan_frames(50, 30.0).clip_indices.shape == (13,)  # the wrong-default-fps pitfall
    short = fr.plan_frames(7, 60.0)
    assert len(short.clip_indices) == 1 and list(short.sync_indices_padded) == [0, 2] + [2] * 14


def test_only_wanted_frames_are_returned_and_seeking_agrees(tmp_path):
    video = write_video(tmp_path / "long.mp4", frames=420, rate="30000/1001", gop=30)
    wanted = [0, 7, 300, 301, 419]
    everything = decode_frames(video)
    got = dict(iter_frames(video, wanted))
    assert sorted(got) == wanted
    for i in wanted:
        assert np.array_equal(got[i].astype(np.float32) / 255.0, everything[i])
    far = [300, 350, 419]
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(iter_frames(video, far), iter_frames(video, far, seek=False),
                                                         strict=True))


def test_start_skips_frames_like_skip_first_frames(tmp_path):
    video = write_video(tmp_path / "v.mkv", frames=60, rate=25)
    later = prepare_frames(video, start=1.0, duration=1.0)
    assert later.skipped == 25 and later.plan.num_frames == 35 and later.plan.duration == 1.0
    direct = torch.from_numpy(decode_frames(video, [25 + int(i) for i in later.plan.clip_indices]))
    assert torch.equal(later.clip, fr.resize_frames(direct, fr.CLIP_SIZE))


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a video\n" * 20])
def test_a_non_video_gets_one_readable_error(tmp_path, content):
    bad = tmp_path / "clip.mp4"
    bad.write_bytes(content)
    with pytest.raises(DecodeError) as err:
        read_stream_info(bad)
    assert str(bad) in str(err.value) and "fix" in str(err.value)


def test_rotation_metadata_turns_frames_upright_as_opencv_does(tmp_path):
    import av

    from selva_engine.video.decode import node_differences

    path = tmp_path / "portrait.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
        stream.set_display_rotation(-90)  # what a phone writes for a portrait recording
        for _ in range(3):
            img = np.zeros((32, 64, 3), np.uint8)
            img[:8, :16] = 255  # a box at the top left
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    info = read_stream_info(path)
    assert (info.width, info.height, info.rotation) == (32, 64, 90)
    frame = decode_frames(path, [0])[0]
    assert frame.shape == (64, 32, 3)
    assert frame[:16, -8:].mean() > 0.9 and frame[-16:, :8].mean() < 0.1  # now at the top right
    assert any("rotation" in n for n in node_differences(info))
    odd = read_stream_info(write_video(tmp_path / "odd.mp4", frames=5, width=60, height=34))
    assert any("not a multiple of 8" in n for n in node_differences(odd))


def test_decoding_stops_after_the_last_needed_frame_and_keeps_one_source_frame(tmp_path, monkeypatch):
    import tracemalloc

    from selva_engine.video import decode

    video = write_video(tmp_path / "long.mkv", frames=150, rate=25, width=320, height=192, gop=25)
    decoded = []
    real_open = decode._open

    class Counting:
        def __init__(self, container):
            self.c = container

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.c.__exit__(*exc)

        def __getattr__(self, name):
            return getattr(self.c, name)

        def decode(self, stream):
            for frame in self.c.decode(stream):
                decoded.append(frame)
                yield frame

    monkeypatch.setattr(decode, "_open", lambda path: Counting(real_open(path)))
    tracemalloc.start()
    p = prepare_frames(video, duration=2.0)  # 2 s of a 6 s video
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert p.plan.num_frames == 150 and p.clip.shape[0] == 16 and p.sync.shape[0] == 50
    assert len(decoded) <= 50 + 1 + 1  # frames 0..49 (+ the header's first frame)
    assert peak < 4 * 320 * 192 * 3  # a few source frames in numpy at most, never the video


def test_mask_files_equal_mask_arrays(tmp_path):
    import av
    from PIL import Image

    from selva_engine.video.extractor import load_mask

    video = write_video(tmp_path / "v.mp4", frames=30, rate=25, width=64, height=48)
    static = np.zeros((48, 64), np.uint8)
    static[8:40, 16:48] = 255
    Image.fromarray(static).save(tmp_path / "v.mask.png")
    from_png = prepare_frames(video, mask=tmp_path / "v.mask.png", mask_strength=0.7)
    from_array = prepare_frames(video, mask=static.astype(np.float32) / 255.0, mask_strength=0.7)
    assert torch.equal(from_png.clip, from_array.clip) and torch.equal(from_png.sync, from_array.sync)

    moving = tmp_path / "v.mask.mkv"
    with av.open(str(moving), "w") as out:  # lossless, so the decoded mask is exact
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "gray"
        for i in range(30):
            img = np.zeros((48, 64, 3), np.uint8)
            img[:, i:i + 20] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    arr = load_mask(moving)
    assert arr.shape == (30, 48, 64) and set(np.unique(arr)) == {0.0, 1.0}
    assert np.array_equal(load_mask(moving, start_frame=5), arr[5:])
    a = prepare_frames(video, mask=moving, mask_strength=1.0)
    b = prepare_frames(video, mask=arr, mask_strength=1.0)
    assert torch.equal(a.clip, b.clip) and torch.equal(a.sync, b.sync)


@pytest.mark.parametrize("hw", [(45, 80), (120, 160), (361, 643)])
def test_our_resize_layout_is_bit_identical_to_the_nodes(hw):
    x = torch.rand(3, *hw, 3, generator=torch.Generator().manual_seed(hw[0]))
    for size in (fr.CLIP_SIZE, fr.SYNC_SIZE):
        node = torch.nn.functional.interpolate(x.permute(0, 3, 1, 2), size=(size, size), mode="bicubic",
                                               align_corners=False).clamp(0, 1)
        assert torch.equal(fr.resize_frames(x, size), node)
        assert torch.equal(fr.resize_frames(x[1:2], size), node[1:2])  # one frame at a time: the same


def test_a_header_that_overcounts_frames_falls_back_to_the_decoded_count(tmp_path, monkeypatch):
    import dataclasses

    from selva_engine.video import extractor

    video = write_video(tmp_path / "v.mp4", frames=20, rate=25)
    right = prepare_frames(video)
    real = extractor.read_stream_info
    monkeypatch.setattr(extractor, "read_stream_info",
                        lambda p: dataclasses.replace(real(p), frame_count=real(p).frame_count + 30))
    fixed = prepare_frames(video)
    assert fixed.plan.num_frames == 20 and fixed.plan.duration == right.plan.duration == 0.8
    assert torch.equal(fixed.sync, right.sync)
