"""Mel converter: goldens (via the conformance runner), frame counts, dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selva_engine.audio.mel import MelConverter, hz_to_mel_slaney, mel_to_hz_slaney
from selva_engine.conformance.runner import run_golden
from selva_engine.model.variants import MODES


@pytest.mark.parametrize("name", ["mel_16k", "mel_44k"])
def test_mel_golden(golden_dir, name):
    result = run_golden(golden_dir / f"{name}.json")
    assert result.ok, result.line()
    assert {c.name for c in result.checks} >= {"output.mel", "debug.mel_basis", "debug.window"}


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_from_mode_matches_golden_params(golden_dir, mode):
    with np.load(golden_dir / f"mel_{mode}.npz", allow_pickle=False) as z:
        wave, expected = z["input.waveform"], z["output.mel"]
    conv = MelConverter.from_mode(MODES[mode])
    got = conv(torch.from_numpy(wave)).numpy()
    np.testing.assert_allclose(got, expected, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize(("mode", "samples", "frames"),
                         [("16k", 128000, 500), ("44k", 353280, 690), ("44k", 352800, 689)])
def test_frame_counts(mode, samples, frames):
    conv = MelConverter.from_mode(MODES[mode])
    assert conv.num_frames(samples) == frames
    assert conv.num_frames(samples) == MODES[mode].sequence().mel_frames or samples == 352800


def test_runs_in_fp32_and_clamps():
    conv = MelConverter.from_mode(MODES["16k"])
    x = torch.randn(2, 4096).to(torch.bfloat16) * 3  # out of [-1, 1] on purpose
    mel = conv(x)
    assert mel.dtype == torch.float32 and mel.shape == (2, 80, 16)
    np.testing.assert_allclose(mel.numpy(), conv(x.float().clamp(-1, 1)).numpy(), atol=1e-6)
    assert conv(torch.zeros(4096)).shape == (80, 16)  # unbatched input


def test_slaney_scale_round_trip_and_knee():
    hz = np.array([0.0, 500.0, 1000.0, 4000.0, 22050.0])
    np.testing.assert_allclose(mel_to_hz_slaney(hz_to_mel_slaney(hz)), hz, rtol=1e-12, atol=1e-9)
    assert hz_to_mel_slaney(1000.0) == pytest.approx(15.0)
