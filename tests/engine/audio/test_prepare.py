"""The [prepare] steps checked against the libraries' documented behaviour, not against themselves."""

from __future__ import annotations

import math

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf

from selva_engine.audio.inspect import true_peak_dbtp
from selva_engine.audio.prepare import PrepareSettings, load_prepared_audio, prepare

RATE = 44100


def _tone(freq: float, seconds: float, amp: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _amplitude(wave: np.ndarray, freq: float, rate: int = RATE) -> float:
    """Amplitude of the `freq` component (windowed DFT at exactly that frequency)."""
    t = np.arange(wave.shape[0]) / rate
    w = np.hanning(wave.shape[0])
    return float(2 * abs(np.sum(wave * w * np.exp(-2j * np.pi * freq * t))) / w.sum())


def test_nothing_on_is_identity_and_defaults_are_the_nodes():
    s = PrepareSettings()
    assert not s.any() and s.steps() == ()
    wave = _tone(440, 1.0, 0.3)
    assert np.array_equal(prepare(wave, RATE, s), wave)
    assert (s.target_lufs, s.true_peak_dbtp) == (-23.0, -1.0)
    assert (s.threshold_db, s.ratio, s.attack_ms, s.release_ms, s.mix) == (-18.0, 2.5, 10.0, 100.0, 0.4)
    assert (s.cutoff_hz, s.blend) == (12000.0, 0.7)


def test_loudness_brings_a_minus_30_lufs_tone_to_the_target():
    wave = _tone(1000, 4.0, 0.05)
    meter = pyloudnorm.Meter(RATE)
    wave = (wave * 10 ** ((-30.0 - meter.integrated_loudness(wave.astype(np.float64))) / 20)).astype(np.float32)
    assert meter.integrated_loudness(wave.astype(np.float64)) == pytest.approx(-30.0, abs=0.01)
    out = prepare(wave, RATE, PrepareSettings(loudness=True))
    assert meter.integrated_loudness(out.astype(np.float64)) == pytest.approx(-23.0, abs=0.1)
    assert true_peak_dbtp(out, RATE) <= -1.0


def test_loudness_true_peak_ceiling_wins_over_the_target():
    # A sparse click train: loud peaks, low integrated loudness -> the ceiling limits the gain.
    wave = np.zeros(RATE * 3, dtype=np.float32)
    wave[:: RATE // 4] = 0.5
    out = prepare(wave, RATE, PrepareSettings(loudness=True, target_lufs=-10.0, true_peak_dbtp=-3.0))
    assert true_peak_dbtp(out, RATE) <= -3.0
    assert true_peak_dbtp(out, RATE) == pytest.approx(-3.0, abs=0.05)


def test_loudness_leaves_a_clip_too_short_to_measure():
    wave = _tone(1000, 0.2, 0.1)
    assert np.array_equal(prepare(wave, RATE, PrepareSettings(loudness=True)), wave)


def _rms_db(x: np.ndarray) -> float:
    return 10 * math.log10(np.mean(x.astype(np.float64) ** 2))


def test_compressor_narrows_a_loud_burst_above_threshold_and_mix_0_is_identity():
    quiet, loud = _tone(500, 1.0, 0.02), _tone(500, 0.3, 0.9)
    wave = np.concatenate([quiet, loud, quiet])
    s = PrepareSettings(compress=True, mix=1.0)
    out = prepare(wave, RATE, s)
    quiet_part, burst = slice(0, RATE), slice(RATE + RATE // 10, RATE + int(0.28 * RATE))
    assert _rms_db(out[quiet_part]) == pytest.approx(_rms_db(wave[quiet_part]), abs=0.1)  # below threshold
    assert _rms_db(out[burst]) < _rms_db(wave[burst]) - 6.0  # 13 dB over threshold at 2.5:1
    # In the burst's steady part the static curve applies: over threshold by X dB -> X / ratio.
    level_in = 20 * math.log10(np.abs(wave[burst]).max())
    level_out = 20 * math.log10(np.abs(out[burst]).max())
    expected = s.threshold_db + (level_in - s.threshold_db) / s.ratio
    assert level_out == pytest.approx(expected, abs=1.0)
    assert np.allclose(prepare(wave, RATE, PrepareSettings(compress=True, mix=0.0)), wave, atol=1e-7)
    half = prepare(wave, RATE, PrepareSettings(compress=True, mix=0.5))
    assert np.allclose(half, 0.5 * wave + 0.5 * out, atol=1e-5)


def _biquad_lowpass_gain(freq: float, cutoff: float, rate: int, q: float = 0.707) -> complex:
    """The RBJ Audio-EQ-Cookbook low-pass's response (what torchaudio's lowpass_biquad implements)."""
    w0 = 2 * np.pi * cutoff / rate
    alpha = np.sin(w0) / (2 * q)
    b = np.array([(1 - np.cos(w0)) / 2, 1 - np.cos(w0), (1 - np.cos(w0)) / 2])
    a = np.array([1 + alpha, -2 * np.cos(w0), 1 - alpha])
    z = np.exp(-1j * 2 * np.pi * freq / rate) ** np.arange(3)
    return complex(np.dot(b, z) / np.dot(a, z))


def test_hf_smoother_attenuates_above_the_cutoff_by_the_blend():
    wave = _tone(1000, 1.0, 0.3) + _tone(18000, 1.0, 0.3)
    s = PrepareSettings(hf_smooth=True)
    out = prepare(wave, RATE, s)
    # Output = blend * lowpass + (1 - blend) * dry, then one gain for the RMS: compare ratios.
    def response(f):
        return abs(s.blend * _biquad_lowpass_gain(f, s.cutoff_hz, RATE) + (1 - s.blend))

    expected = response(18000) / response(1000)
    measured = _amplitude(out, 18000) / _amplitude(out, 1000)
    assert measured == pytest.approx(expected, rel=0.03)
    assert expected < 0.5  # well attenuated, yet never below the dry share
    rms = lambda x: float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))  # noqa: E731
    assert rms(out) == pytest.approx(rms(wave), rel=1e-3)
    off = prepare(wave, RATE, PrepareSettings(hf_smooth=True, blend=0.0))
    assert np.allclose(off, wave, atol=1e-6)


def test_soxr_resampling_keeps_a_48k_sweep_in_band_without_aliasing(tmp_path):
    rate_in, seconds = 48000, 2.0
    t = np.arange(int(rate_in * seconds)) / rate_in
    f0, f1 = 100.0, 20000.0
    sweep = 0.4 * np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * seconds)))
    # A 23 kHz tone lies above 44.1 kHz's Nyquist: it must be removed, not fold back to 21.1 kHz.
    path = tmp_path / "sweep.wav"
    sf.write(path, (sweep + 0.4 * np.sin(2 * np.pi * 23000 * t)).astype(np.float32), rate_in, subtype="FLOAT")
    n = int(RATE * seconds)
    out = load_prepared_audio(path, RATE, n, PrepareSettings(resample=True))
    assert out.shape == (n,) and out.dtype == np.float32
    spec = np.abs(np.fft.rfft(out * np.hanning(n))) ** 2
    freqs = np.fft.rfftfreq(n, 1 / RATE)
    ref = np.abs(np.fft.rfft(sweep * np.hanning(sweep.shape[0]))) ** 2
    ref_freqs = np.fft.rfftfreq(sweep.shape[0], 1 / rate_in)
    # The sweep's band keeps its energy (soxr VHQ's passband reaches ~95 % of Nyquist).
    # Parseval: sum |X|^2 / N is the sum of squares, which over a fixed duration scales with the rate.
    kept = (spec[freqs < 20500].sum() / n / RATE) / (ref[ref_freqs < 20500].sum() / sweep.shape[0] / rate_in)
    assert kept == pytest.approx(1.0, rel=0.01)
    alias = spec[(freqs > 21000) & (freqs < 21200)].max()
    inband = spec[(freqs > 1000) & (freqs < 19000)].mean()
    assert 10 * math.log10(alias / inband) < -100


def test_settings_digest_and_table():
    a = PrepareSettings(loudness=True)
    assert a.digest() == PrepareSettings(loudness=True, cutoff_hz=9000.0).digest()  # hf_smooth off
    assert a.digest() != PrepareSettings(loudness=True, target_lufs=-20.0).digest()
    assert a.applied() == {"steps": ["loudness"], "loudness": {"target_lufs": -23.0, "true_peak_dbtp": -1.0}}
    assert PrepareSettings.from_dict({"loudness": True, "target_lufs": -20}).target_lufs == -20.0
    with pytest.raises(ValueError, match="out of range"):
        PrepareSettings.from_dict({"target_lufs": -50})
    with pytest.raises(ValueError, match="unknown"):
        PrepareSettings.from_dict({"lufs": -20})
