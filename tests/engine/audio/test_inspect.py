"""The Inspector's figures against what BS.1770 and signal theory say they must be, and the
blockwise scan's memory bound."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import soxr

from selva_engine.audio import inspect as I
from selva_engine.audio.files import read_audio, scan_audio
from selva_engine.errors import AudioFileError

SR = 44100


def tone(freq: float, amp: float, seconds: float = 8.0, sr: int = SR,
         phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def noise(amp: float, seconds: float = 8.0, sr: int = SR, seed: int = 0) -> np.ndarray:
    return (amp * np.random.default_rng(seed).standard_normal(int(seconds * sr))).astype(
        np.float32)


def test_frame_rms_is_the_rms_of_each_2048_frame_at_hop_512():
    x = noise(0.1, seconds=0.5)
    want = [math.sqrt(np.mean(x[i:i + 2048].astype(np.float64) ** 2))
            for i in range(0, x.size - 2048 + 1, 512)]
    np.testing.assert_allclose(I.frame_rms(x), want, rtol=1e-9)
    assert I.frame_rms(x[:2047]).size == 0 and I.snr_estimate_db(I.frame_rms(x[:100])) == 60.0


def test_snr_estimate_is_loud_over_quiet_frames():
    """Half the clip a tone at 0.5, half at 0.005: the 95th/5th percentile of frame RMS is
    100, i.e. 40 dB; steady noise has no quiet frames and reads near 0 dB."""
    x = tone(440, 0.5)
    x[x.size // 2:] *= 0.01
    assert I.snr_estimate_db(I.frame_rms(x)) == pytest.approx(40.0, abs=0.3)
    assert I.snr_estimate_db(I.frame_rms(noise(0.1))) < 1.0


def test_codec_shelf_flags_a_band_limited_source_only():
    """White noise is flat (ratio ~0 dB); the same noise through a 32 kHz round trip (soxr
    keeps nothing above 16 kHz, as an MP3 encoder's low-pass) has an empty 15-20 kHz band."""
    white = noise(0.1)
    assert abs(I.hf_shelf_db(white, SR)) < 1.0
    cut = soxr.resample(soxr.resample(white, SR, 28000, quality="VHQ"), 28000, SR,
                        quality="VHQ")[:white.size]
    assert I.hf_shelf_db(cut, SR) > 40.0
    assert I.hf_shelf_db(white[:16000 * 8], 16000) is None  # no 15-20 kHz band at 16 kHz


def test_integrated_loudness_of_a_sine_is_its_level_minus_3_db():
    """BS.1770: a 997 Hz sine at 0 dBFS peak in one channel reads -3.01 LUFS, so one at
    -20 dBFS reads -23.0 LUFS; silence and a clip under one 0.4 s block are unmeasurable."""
    assert I.integrated_lufs(tone(997, 0.1), SR) == pytest.approx(-23.01, abs=0.1)
    assert I.integrated_lufs(tone(997, 0.1, sr=48000), 48000) == pytest.approx(-23.01, abs=0.1)
    assert I.integrated_lufs(np.zeros(SR * 2, np.float32), SR) is None
    assert I.integrated_lufs(tone(997, 0.1, seconds=0.3), SR) is None


def test_true_peak_finds_the_peak_between_samples():
    """A sine at a quarter of the rate, 45 degrees off: every sample is at +-0.707 (-3 dBFS)
    while the waveform peaks at 1.0 (0 dBTP), the case BS.1770-4's oversampling is for."""
    x = tone(SR / 4, 1.0, seconds=1.0, phase=math.pi / 4)
    assert 20 * math.log10(np.abs(x).max()) == pytest.approx(-3.01, abs=0.05)
    assert I.true_peak_dbtp(x, SR) == pytest.approx(0.0, abs=0.1)
    assert I.true_peak_dbtp(np.zeros(100, np.float32), SR) is None


def test_silent_fraction_counts_quiet_frames_and_spares_zero_padding():
    x = tone(440, 0.3)
    x[: x.size // 2] = noise(1e-4, seconds=4.0)  # -80 dBFS room noise: quiet, not padding
    ins = I.inspect_mono(x, SR)
    assert ins.silent_fraction == pytest.approx(0.5, abs=0.01) and ins.padded_fraction == 0
    th = I.InspectThresholds(max_silent_fraction=0.4)
    assert "mostly-silent" in {c for c, _, _ in I.find_issues(ins, th)}
    x[: x.size // 2] = 0.0  # the guide's deliberate padding around a short event
    ins = I.inspect_mono(x, SR)
    assert ins.silent_fraction == pytest.approx(0.5, abs=0.01)
    assert "mostly-silent" not in {c for c, _, _ in I.find_issues(ins, th)}


def test_each_threshold_flags_with_its_figure():
    ins = I.Inspection(peak=0.995, snr_db=9.5, silent_fraction=0.7, padded_fraction=0.0,
                       hf_shelf_db=55.0, lufs=-48.0, true_peak_dbtp=0.2)
    issues = {code: message for code, message, fix in I.find_issues(ins, I.InspectThresholds())}
    assert set(issues) == {"near-clipping", "low-snr", "codec-shelf", "mostly-silent", "quiet"}
    assert "9.5 dB" in issues["low-snr"] and "55.0 dB" in issues["codec-shelf"]
    assert "-48.0 LUFS" in issues["quiet"] and "70%" in issues["mostly-silent"]
    off = I.InspectThresholds(min_snr_db=0, check_codec=False, max_silent_fraction=0,
                              clip_peak=1.0, min_lufs=-70)
    assert I.find_issues(ins, off) == []


def test_scan_reads_an_8_channel_192k_file_in_bounded_memory(tmp_path):
    """The figures of a heavy file come from blocks: the scan holds the mono mix and one
    block, not the (frames, 8) array that a whole read needs."""
    sr, seconds = 192000, 6.0
    path = tmp_path / "heavy.wav"
    with sf.SoundFile(path, "w", sr, 8, "FLOAT") as f:
        for _ in range(int(seconds)):
            f.write(np.tile(tone(300, 0.2, 1.0, sr)[:, None], (1, 8)))
    whole = int(seconds * sr) * 8 * 4  # bytes of the float32 samples: 36.9 MB
    tracemalloc.start()
    try:
        scan = scan_audio(path, max_seconds=seconds)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        read_audio(path, max_seconds=seconds)
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scan.channels == 8 and scan.mono.size == seconds * sr
    assert peak < whole / 3 < whole_peak, (peak, whole_peak)
    assert scan.peak == pytest.approx(0.2, abs=1e-3) and scan.samples == seconds * sr * 8
    assert scan.mono_rms == pytest.approx(0.2 / math.sqrt(2), rel=1e-3)


def test_scan_refuses_nan_and_absurd_rates(tmp_path):
    x = tone(440, 0.3, seconds=1.0)
    x[SR // 2] = np.nan
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    with pytest.raises(AudioFileError, match="NaN"):
        scan_audio(tmp_path / "nan.wav", 2.0)
    sf.write(tmp_path / "fast.wav", tone(440, 0.3, seconds=0.1), 2_000_000)
    with pytest.raises(AudioFileError, match="invalid sample rate"):
        scan_audio(tmp_path / "fast.wav", 2.0)


def test_loudness_above_48k_is_measured_at_48k():
    """A 192 kHz file's -20 dBFS 997 Hz sine reads -23.0 LUFS like at 48 kHz."""
    assert I.integrated_lufs(tone(997, 0.1, seconds=2.0, sr=192000), 192000) == pytest.approx(
        -23.01, abs=0.1)
