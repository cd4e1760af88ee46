"""The spectral match, checked by what the Spectral Matcher node documents: each band's mean
log-mel moves `strength` of the way towards the VAE's means, no band by more than
`max_gain_db`, the RMS is kept, and strength 0 changes nothing (measured with the variant's own
mel converter, in both modes' log bases)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from selva_engine.audio.mel import MelConverter
from selva_engine.audio.prepare import PrepareSettings, prepare
from selva_engine.audio.spectral import SpectralTarget, spectral_match
from selva_engine.model.variants import MODES


def _noise(rate: int, seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(int(rate * seconds)) * 0.05).astype(np.float32)


def _tilt(wave: np.ndarray, rate: int, above_hz: float, db: float) -> np.ndarray:
    """`wave` with every frequency above `above_hz` changed by `db` (an FFT brick shelf)."""
    spec = np.fft.rfft(wave)
    freqs = np.fft.rfftfreq(wave.shape[0], 1.0 / rate)
    spec[freqs > above_hz] *= 10 ** (db / 20)
    return np.fft.irfft(spec, n=wave.shape[0]).astype(np.float32)


def _band_means_db(mel: MelConverter, wave: np.ndarray) -> np.ndarray:
    import torch

    return mel(torch.from_numpy(wave)).mean(-1).numpy() * 20 * math.log10(mel.log_base)


def _setup(mode: str):
    import torch

    mel = MelConverter.from_mode(MODES[mode])
    rate = mel.sampling_rate
    reference = _noise(rate, seed=1)
    target = SpectralTarget(mel=mel, mean=mel(torch.from_numpy(reference)).mean(-1))
    dark = _tilt(reference, rate, above_hz=rate / 8, db=-9.0)  # the top bands 9 dB down
    return mel, rate, reference, target, dark


def _shape_error(mel, wave, reference) -> np.ndarray:
    """Per-band dB difference from the reference, the overall level removed."""
    diff = _band_means_db(mel, wave) - _band_means_db(mel, reference)
    return diff - np.median(diff)


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_the_bands_move_strength_of_the_way_to_the_vae_means(mode):
    mel, rate, reference, target, dark = _setup(mode)
    before = np.abs(_shape_error(mel, dark, reference))
    assert before.max() > 7  # the tilt is there
    full = spectral_match(dark, target, strength=1.0, max_gain_db=30.0)
    assert np.abs(_shape_error(mel, full, reference)).max() < 0.25 * before.max()
    half = spectral_match(dark, target, strength=0.5, max_gain_db=30.0)
    top = before > 7
    moved = (_band_means_db(mel, half) - _band_means_db(mel, dark))[top] - np.median(
        _band_means_db(mel, half) - _band_means_db(mel, dark))
    assert np.all(np.abs(moved - 4.5) < 1.2)  # half of the 9 dB


def test_no_band_changes_more_than_max_gain_db_and_the_rms_is_kept():
    mel, rate, reference, target, dark = _setup("44k")
    out = spectral_match(dark, target, strength=1.0, max_gain_db=3.0)
    change = _band_means_db(mel, out) - _band_means_db(mel, dark)
    assert np.ptp(change) < 2 * 3.0 + 0.5  # every band within +-3 dB (then one RMS gain for all)
    assert abs(np.sqrt(np.mean(out ** 2)) / np.sqrt(np.mean(dark ** 2)) - 1) < 1e-4
    assert out.shape == dark.shape and out.dtype == np.float32 and np.abs(out).max() <= 1.0


def test_strength_zero_changes_nothing_and_silence_stays_silence():
    _, rate, _, target, dark = _setup("16k")
    assert np.allclose(spectral_match(dark, target, 0.0, 12.0), dark, atol=1e-5)
    silence = np.zeros(rate, np.float32)
    assert np.array_equal(spectral_match(silence, target, 0.8, 12.0), silence)


def test_the_step_runs_in_prepare_after_compress_with_the_nodes_defaults():
    _, rate, _, target, dark = _setup("16k")
    s = PrepareSettings(spectral_match=True)
    assert (s.match_strength, s.match_max_gain_db) == (0.8, 12.0)
    assert s.steps() == ("spectral_match",)
    assert json.dumps(s.applied()) == json.dumps(
        {"steps": ["spectral_match"], "spectral_match": {"match_strength": 0.8, "match_max_gain_db": 12.0}})
    assert np.allclose(prepare(dark, rate, s, target), spectral_match(dark, target, 0.8, 12.0))
    with pytest.raises(ValueError, match="VAE means"):
        prepare(dark, rate, s)  # no target: never silently skipped
    both = PrepareSettings(compress=True, spectral_match=True, hf_smooth=True)
    assert both.steps() == ("compress", "spectral_match", "hf_smooth")
