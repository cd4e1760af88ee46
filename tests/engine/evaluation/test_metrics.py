"""Spectral metrics on synthetic signals with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selva_engine.evaluation.metrics import SampleMetrics, compute_metrics, mel_filterbank

SR = 16000


def noise(seconds: float = 4.0, seed: int = 0, sr: int = SR) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(int(seconds * sr)) * 0.1


def tone(freq: float, seconds: float = 4.0, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    return amp * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)


@pytest.mark.parametrize("sr", [16000, 44100])
def test_white_noise(sr):
    m = compute_metrics(noise(sr=sr), sr)
    expected_hf = (sr / 2 - 4000) / (sr / 2)
    assert m.hf_energy_ratio == pytest.approx(expected_hf, abs=0.02)
    assert m.spectral_flatness > 0.9
    assert m.spectral_centroid_hz == pytest.approx(sr / 4, rel=0.03)
    assert m.spectral_rolloff_hz == pytest.approx(0.85 * sr / 2, rel=0.03)
    assert m.temporal_variance < 0.1  # stationary


def test_pure_tone():
    m = compute_metrics(tone(1000.0), SR)
    assert m.spectral_centroid_hz == pytest.approx(1000.0, abs=20)
    assert m.spectral_flatness < 1e-3
    assert abs(m.spectral_rolloff_hz - 1000.0) <= 2 * SR / 2048
    assert m.hf_energy_ratio < 1e-6
    assert m.temporal_variance < 1e-3


def test_high_tone_hf_ratio():
    assert compute_metrics(tone(6000.0), SR).hf_energy_ratio > 0.999


def test_temporal_variance_of_bursts():
    x = tone(500.0)
    x[: x.size // 2] *= 0.01
    assert compute_metrics(x, SR).temporal_variance > 0.8


def test_silence_has_no_nan():
    z = np.zeros(SR * 2)
    m = compute_metrics(z, SR, reference=z)
    d = m.to_dict()
    assert all(math.isfinite(v) for v in d.values())
    assert m.spectral_flatness == 0.0 and m.spectral_centroid_hz == 0.0
    assert m.log_spectral_distance_db == 0.0 and m.mel_cepstral_distortion == 0.0
    assert m.per_band_correlation == 1.0
    m2 = compute_metrics(z, SR, reference=noise())
    assert all(math.isfinite(v) for v in m2.to_dict().values())
    assert m2.log_spectral_distance_db > 20


def test_identical_signals():
    x = noise() + tone(440.0)
    m = compute_metrics(x, SR, reference=x.copy())
    assert m.log_spectral_distance_db == pytest.approx(0.0, abs=1e-9)
    assert m.mel_cepstral_distortion == pytest.approx(0.0, abs=1e-9)
    assert m.per_band_correlation == pytest.approx(1.0, abs=1e-9)


def test_distance_grows_with_difference():
    ref = noise(seed=1) * np.linspace(0, 1, SR * 4)  # rising envelope
    close = ref + noise(seed=2) * 0.01
    far = tone(300.0)
    mc = compute_metrics(close, SR, reference=ref)
    mf = compute_metrics(far, SR, reference=ref)
    assert mc.log_spectral_distance_db < mf.log_spectral_distance_db
    assert mc.mel_cepstral_distortion < mf.mel_cepstral_distortion
    assert mc.per_band_correlation > 0.9 > mf.per_band_correlation


def test_scaled_signal_mcd_is_gain_in_db():
    x = noise()
    m = compute_metrics(x * 2.0, SR, reference=x)  # +6.02 dB everywhere
    assert m.mel_cepstral_distortion == pytest.approx(20 * math.log10(2), abs=0.01)
    assert m.log_spectral_distance_db == pytest.approx(20 * math.log10(2), abs=0.05)
    assert m.per_band_correlation == pytest.approx(1.0, abs=1e-6)


def test_lengths_differ_and_short_input():
    m = compute_metrics(noise(1.0), SR, reference=noise(3.0))
    assert m.log_spectral_distance_db is not None
    short = compute_metrics(tone(1000.0, seconds=0.05), SR)  # 800 samples < n_fft
    assert math.isfinite(short.spectral_centroid_hz)


def test_to_dict_and_bad_input():
    m = compute_metrics(noise(), SR)
    assert isinstance(m, SampleMetrics)
    assert set(m.to_dict()) == {"hf_energy_ratio", "spectral_centroid_hz", "spectral_rolloff_hz",
                                "spectral_flatness", "temporal_variance"}
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics(np.array([0.0, np.nan] * 2000), SR)
    with pytest.raises(ValueError, match="mono"):
        compute_metrics(np.zeros((2, 100)), SR)
    with pytest.raises(ValueError, match="empty"):
        compute_metrics(np.zeros(0), SR)
    assert compute_metrics(noise()[None, :], SR).spectral_flatness > 0.9


def test_mel_filterbank_shape_and_coverage():
    fb = mel_filterbank(SR)
    assert fb.shape == (80, 1025)
    assert np.all(fb >= 0) and np.all(fb.sum(axis=1) > 0)
    peaks = fb.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0)
