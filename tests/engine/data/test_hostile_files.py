"""Hostile dataset files: compressed .npz bombs, odd dtypes and ranks, FIFOs and other
non-regular files, links out of the dataset, prompts.txt names that are paths, floods."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from selva_engine.data import dataset as D
from selva_engine.model.variants import get_variant
from tests.hostile_data import deadline, write_npz_bomb, write_npz_header_bomb

from .test_dataset import make_clip, write_npz, write_wav

V16 = get_variant("tiny_16k")
MiB = 1 << 20


def _peak_bytes(fn) -> tuple[int, BaseException | None]:
    """Peak traced allocation (numpy's included) while `fn()` runs, and what it raised."""
    tracemalloc.start()
    try:
        fn()
        err = None
    except BaseException as exc:  # noqa: BLE001 - returned to the test
        err = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak, err


# ---------------------------------------------------------------- .npz bombs

@pytest.mark.parametrize("key,shape", [("clip_features", (1, 65536, 1024)),
                                       ("sync_features", (1, 131072, 768))])
def test_a_compressed_bomb_costs_only_the_rows_the_model_uses(tmp_path, key, shape):
    """256-384 MiB of zeros in a ~1 MB file: only the first 8 s of rows are inflated."""
    p = write_npz_bomb(tmp_path / "bomb.npz", shape, key=key)
    assert p.stat().st_size < 2 * MiB
    peak, err = _peak_bytes(lambda: D.load_features(p, V16))
    assert err is None, err
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB allocated for 8 s of rows"
    f = D.load_features(p, V16)
    frames = f.clip_frames if key == "clip_features" else f.sync_frames
    assert frames == shape[1] and f.clip.shape == (64, 1024) and f.sync.shape == (192, 768)


@pytest.mark.parametrize("key", ["clip_features", "sync_features"])
def test_a_header_declaring_gigabytes_is_refused_unread(tmp_path, key):
    p = write_npz_header_bomb(tmp_path / "bomb.npz", (1, 1 << 22, 1024 if key ==
                                                      "clip_features" else 768), key=key)
    peak, err = _peak_bytes(lambda: D.load_features(p, V16))
    assert isinstance(err, D.ArrayTooLargeError), err
    assert err.code == "array-too-large"
    msg = str(err)
    assert msg.startswith(str(p)) and key in msg and "4194304" in msg and "2.0 GiB" in msg
    assert "(fix: " in msg
    assert peak < 16 * MiB, f"{peak / MiB:.0f} MiB allocated for a refused file"


def test_string_bomb_is_refused(tmp_path):
    ok = {"clip_features": np.zeros((1, 64, 1024), np.float32),
          "sync_features": np.zeros((1, 192, 768), np.float32)}
    p = write_npz_bomb(tmp_path / "bomb.npz", (), key="prompt", dtype="<U50000000", others=ok)
    peak, err = _peak_bytes(lambda: D.load_features(p, V16))
    assert isinstance(err, D.ArrayTooLargeError) and "prompt" in str(err), err
    assert peak < 16 * MiB


def test_comfyui_whole_video_features_are_trimmed_to_the_clip(tmp_path):
    """ComfyUI's extractor with duration 0 on an 81 s video writes 648 CLIP and 2016 sync
    rows; the model takes the first 8 s, 64 and 192 rows: exactly the file's first rows
    (also from a Fortran-order array). A 12,000-character prompt is kept."""
    rng = np.random.default_rng(0)
    clip = rng.standard_normal((1, 648, 1024)).astype(np.float32)
    sync = rng.standard_normal((1, 2016, 768)).astype(np.float32)
    p = tmp_path / "long.npz"
    np.savez(p, clip_features=clip, sync_features=sync, duration=np.array(81.0),
             prompt=np.array("x" * 12_000))
    f = D.load_features(p, V16)
    assert (f.clip_frames, f.sync_frames) == (648, 2016) and f.duration == 81.0
    np.testing.assert_array_equal(f.clip, clip[0, :64])
    np.testing.assert_array_equal(f.sync, sync[0, :192])
    assert len(f.npz_prompt) == 12_000
    f10 = D.load_features(p, V16, duration=10.0)  # 10 s clips use 80 and 240 rows
    np.testing.assert_array_equal(f10.clip, clip[0, :80])
    np.savez(p, clip_features=np.asfortranarray(clip[0]), sync_features=sync)
    np.testing.assert_array_equal(D.load_features(p, V16).clip, clip[0, :64])


@pytest.mark.parametrize("clip,match", [
    (np.ones((1, 64, 1024), np.int32), "dtype int32"),
    (np.ones((1, 64, 1024), np.uint8), "dtype uint8"),
    (np.ones((1, 64, 1024), np.complex64), "dtype complex64"),
    (np.ones((1, 1, 64, 1024), np.float32), r"shape \(1, 1, 64, 1024\)"),
    (np.ones((1,) * 30, np.float32), "shape"),
    (np.array(True), "shape"),
])
def test_non_float_dtypes_and_odd_ranks_are_refused(tmp_path, clip, match):
    p = tmp_path / "c.npz"
    np.savez(p, clip_features=clip, sync_features=np.ones((1, 192, 768), np.float32))
    with pytest.raises(D.FeatureFileError, match=match) as exc:
        D.load_features(p, V16)
    assert str(exc.value).startswith(str(p)) and "clip_features" in str(exc.value)


def test_training_loads_through_the_same_check(tmp_path):
    make_clip(tmp_path, "good")
    write_npz_header_bomb(tmp_path / "bomb.npz")
    write_wav(tmp_path / "bomb.wav")
    peak, err = _peak_bytes(lambda: D.load_dataset(tmp_path, V16, collect=True))
    assert err is None
    scan = D.load_dataset(tmp_path, V16, collect=True)
    assert [c.stem for c in scan.clips] == ["good"]
    assert [(p.code, p.path.name) for p in scan.problems] == [("array-too-large", "bomb.npz")]
    assert peak < 48 * MiB
    with pytest.raises(D.ArrayTooLargeError):
        D.load_dataset(tmp_path, V16)


# ---------------------------------------------------------------- FIFOs and other non-files

def test_fifos_named_like_clips_are_never_opened(tmp_path):
    make_clip(tmp_path, "good")
    os.mkfifo(tmp_path / "pipe.npz")
    write_wav(tmp_path / "pipe.wav")
    write_npz(tmp_path / "talk.npz")
    os.mkfifo(tmp_path / "talk.wav")
    (tmp_path / "dir.wav").mkdir()
    write_npz(tmp_path / "dir.npz")
    with deadline(10):
        pairs, problems = D.find_pairs(tmp_path)
        scan = D.load_dataset(tmp_path, V16, collect=True)
    assert [p.stem for p in pairs] == ["good"] and [c.stem for c in scan.clips] == ["good"]
    got = sorted((p.code, p.path.name) for p in problems)
    assert got == [("not-a-file", "dir.wav"), ("not-a-file", "pipe.npz"),
                   ("not-a-file", "talk.wav")], problems  # no orphan/missing noise on top
    msg = str(next(p for p in problems if p.path.name == "pipe.npz"))
    assert "FIFO" in msg and "(fix: " in msg
    assert sorted(p.path.name for p in scan.problems) == ["dir.wav", "pipe.npz", "talk.wav"]


def test_readers_refuse_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "c.npz")
    os.mkfifo(tmp_path / "c.wav")
    with deadline(10):
        with pytest.raises(D.NotRegularFileError, match="FIFO"):
            D.load_features(tmp_path / "c.npz", V16)
        with pytest.raises(D.NotRegularFileError, match="FIFO"):
            D.read_audio(tmp_path / "c.wav")
        with pytest.raises(D.NotRegularFileError, match="FIFO"):
            D.load_audio(tmp_path / "c.wav", 16000, 128000)


def test_a_clip_swapped_for_a_fifo_after_the_scan_is_not_opened(tmp_path):
    """Extraction hashes and reads the clips the scan found; a file replaced by a FIFO in
    between must not hang the run."""
    from selva_engine.data.extract import hash_file

    make_clip(tmp_path, "a")
    clip = D.load_dataset(tmp_path, V16).clips[0]
    clip.audio_path.unlink()
    os.mkfifo(clip.audio_path)
    with deadline(10):
        with pytest.raises(D.NotRegularFileError, match="FIFO"):
            hash_file(clip.audio_path)
        with pytest.raises(D.NotRegularFileError, match="FIFO"):
            D.load_audio(clip.audio_path, 16000, 128000)


def test_prompts_txt_fifo_is_a_problem_not_a_hang(tmp_path):
    make_clip(tmp_path, "a")
    os.mkfifo(tmp_path / "prompts.txt")
    with deadline(10):
        prompts, problems = D.read_prompts(tmp_path)
        with pytest.raises(D.NotRegularFileError, match="prompts.txt"):
            D.load_dataset(tmp_path, V16)
    assert prompts == {} and [p.code for p in problems] == ["not-a-file"]


# ---------------------------------------------------------------- links out of the dataset

def _linked_dataset(tmp_path: Path) -> tuple[Path, Path]:
    ds, outside = tmp_path / "own", tmp_path / "elsewhere"
    ds.mkdir()
    outside.mkdir()
    make_clip(ds, "good")
    make_clip(outside, "secret")
    (ds / "x.npz").symlink_to(outside / "secret.npz")
    (ds / "x.wav").symlink_to(outside / "secret.wav")
    write_npz(ds / "p.npz")
    (ds / "p.wav").symlink_to("/etc/passwd")
    (ds / "takes").mkdir()  # a link that stays inside the dataset is fine
    write_wav(ds / "takes" / "in.wav")
    write_npz(ds / "in.npz")
    (ds / "in.wav").symlink_to("takes/in.wav")
    return ds, outside


def test_links_out_of_the_dataset_are_refused(tmp_path):
    ds, outside = _linked_dataset(tmp_path)
    pairs, problems = D.find_pairs(ds)
    assert [p.stem for p in pairs] == ["good", "in"]
    got = {p.path.name: p for p in problems}
    assert sorted(got) == ["p.wav", "x.npz", "x.wav"]
    assert {p.code for p in problems} == {"outside-dataset"}
    msg = str(got["x.npz"])
    assert msg.startswith(str(ds / "x.npz")) and str(outside / "secret.npz") in msg
    assert "/etc/passwd" in str(got["p.wav"])
    scan = D.load_dataset(ds, V16, collect=True)
    assert [c.stem for c in scan.clips] == ["good", "in"]
    assert sorted(p.path.name for p in scan.problems) == ["p.wav", "x.npz", "x.wav"]


def test_readers_refuse_links_out_of_their_root(tmp_path):
    ds, outside = _linked_dataset(tmp_path)
    os.mkfifo(outside / "pipe.wav")
    (ds / "pipe.wav").symlink_to(outside / "pipe.wav")  # opening it would block
    with deadline(10):
        with pytest.raises(D.LinkOutsideError, match="secret.npz"):
            D.load_features(ds / "x.npz", V16, root=ds)
        with pytest.raises(D.LinkOutsideError, match="pipe.wav"):
            D.read_audio(ds / "pipe.wav", root=ds)
        with pytest.raises(D.LinkOutsideError, match="passwd"):
            D.load_audio(ds / "p.wav", 16000, 128000)  # root: the clip's own directory
    assert D.load_features(ds / "x.npz", V16).clip.shape == (64, 1024)  # no root: a user's file
    assert D.load_audio(ds / "in.wav", 16000, 128000).shape == (128000,)


def test_broken_link_is_a_per_file_error(tmp_path):
    make_clip(tmp_path, "good")
    write_npz(tmp_path / "gone.npz")
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nothing.wav")
    pairs, problems = D.find_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["good"]
    assert [(p.code, p.path.name) for p in problems] == [("unreadable-file", "gone.wav")]
    assert "broken symbolic link" in str(problems[0])


# ---------------------------------------------------------------- prompts.txt

@pytest.mark.parametrize("name", ["../../outside/secret.npz", "../own/a.npz", "sub/a.npz",
                                  "/etc/a.npz", "sub\\a.npz", "..", "a\x00.npz"])
def test_prompt_names_that_are_paths_are_errors(tmp_path, name):
    ds = tmp_path / "deep" / "own"
    ds.mkdir(parents=True)
    make_clip(ds, "a")
    (ds / "sub").mkdir()
    write_npz(ds / "sub" / "a.npz")
    (tmp_path / "outside").mkdir()
    write_npz(tmp_path / "outside" / "secret.npz")
    (ds / "prompts.txt").write_text(f"{name}: stolen prompt\na.npz: a dog\n")
    prompts, problems = D.read_prompts(ds)
    assert prompts == {"a.npz": "a dog"}
    assert [p.code for p in problems] == ["prompts-bad-name"], problems
    assert isinstance(problems[0], D.PromptNameError)
    assert "prompts.txt:1" in str(problems[0]) and "plain file name" in str(problems[0])
    scan = D.load_dataset(ds, V16, collect=True)
    assert [c.prompt for c in scan.clips] == ["a dog"]


def test_repeated_prompt_warnings_are_summarised(tmp_path):
    make_clip(tmp_path, "a")
    lines = [f"ghost{i}.npz: x" for i in range(100_000)]
    (tmp_path / "prompts.txt").write_text("\n".join(lines) + "\n")
    scan = D.load_dataset(tmp_path, V16)
    assert len(scan.warnings) == 6, scan.warnings[:8]
    assert all("ghost" in w for w in scan.warnings[:5])
    assert "99,995 more like this" in scan.warnings[5]
    assert len(scan.clips) == 1


def test_a_dotfile_named_npz_is_reported_as_skipped_by_training(tmp_path):
    make_clip(tmp_path, "good")
    make_clip(tmp_path, "x")
    (tmp_path / "x.npz").rename(tmp_path / ".._escape_001.npz")
    scan = D.load_dataset(tmp_path, V16, collect=True)
    assert [c.stem for c in scan.clips] == ["good"]
    assert any(".._escape_001.npz" in w and "skipped" in w for w in scan.warnings), scan.warnings
