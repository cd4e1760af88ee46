"""selva-sample on clips shorter than one sync segment or one CLIP frame, as ComfyUI's
Feature Extractor writes them (a 1-frame video, a 0.5-s video), and out-of-range durations."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from selva_engine.cli import sample_main
from selva_engine.model.variants import get_variant


def _node_npz(path, duration: float, fps: float = 25.0, seed: int = 0):
    """Features shaped as the node's extractor makes them for `duration` s of video:
    max(1, int(d * 8)) CLIP frames; sync frames padded to 16, 8 tokens per segment."""
    clip_n = max(1, int(duration * 8))
    sync_frames = max(16, max(1, int(duration * 25)))
    sync_n = 8 * ((sync_frames - 16) // 8 + 1)
    rng = np.random.default_rng(seed)
    np.savez(path, clip_features=rng.standard_normal((1, clip_n, 1024)).astype(np.float32),
             sync_features=rng.standard_normal((1, sync_n, 768)).astype(np.float32),
             duration=np.array(duration), prompt=np.array("a dog barks"))
    return path, clip_n, sync_n


@pytest.mark.parametrize("duration", [1 / 25, 1 / 30, 0.1, 0.5, 0.63, 0.64, 1.0, 2.37])
def test_sequence_lengths_follow_the_extractors_frame_counts(tmp_path, duration):
    _, clip_n, sync_n = _node_npz(tmp_path / "x.npz", duration)
    for name in ("tiny_16k", "large_44k"):
        seq = get_variant(name).sequence(duration)
        assert (seq.clip_seq_len, seq.sync_seq_len) == (clip_n, sync_n)
        assert seq.latent_seq_len >= 1


def test_8s_lengths_are_mmaudios():
    seq = get_variant("large_44k").sequence(8.0)
    assert (seq.latent_seq_len, seq.clip_seq_len, seq.sync_seq_len) == (345, 64, 192)


@pytest.mark.parametrize("duration", [1 / 25, 0.5])
def test_short_node_clips_generate_their_own_length(tmp_path, tiny_weights, duration):
    npz, _, _ = _node_npz(tmp_path / "short.npz", duration)
    out = tmp_path / "short.wav"
    assert sample_main(["--npz", str(npz), "--variant", "tiny_16k", "--selva_dir", str(tiny_weights),
                        "--steps", "2", "--device", "cpu", "--output", str(out)]) == 0
    wave, sr = sf.read(out)
    want = get_variant("tiny_16k").sequence(duration).num_audio_frames
    assert sr == 16000 and wave.shape == (want,) and want >= duration * sr
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0


def test_bad_durations_are_one_sentence_errors(tmp_path, tiny_weights, capsys):
    npz, _, _ = _node_npz(tmp_path / "a.npz", 0.5)
    base = ["--npz", str(npz), "--variant", "tiny_16k", "--selva_dir", str(tiny_weights),
            "--steps", "1", "--device", "cpu", "--output", str(tmp_path / "o.wav")]
    for bad in ("0", "-1", "nan", "31"):
        assert sample_main(base + ["--duration", bad]) == 2
        err = capsys.readouterr().err
        assert "--duration must be more than 0 and at most 30 seconds" in err, err
        assert "Traceback" not in err
    zero, _, _ = _node_npz(tmp_path / "zero.npz", 0.5)
    with np.load(zero) as z:
        arrays = dict(z)
    arrays["duration"] = np.array(0.0)
    np.savez(zero, **arrays)
    assert sample_main(base[:0] + ["--npz", str(zero)] + base[2:]) == 2
    assert "zero.npz: its 'duration' is 0 s" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()
