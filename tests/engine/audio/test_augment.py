"""The [augment] variants checked against pedalboard's documented behaviour, not against themselves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from selva_engine.audio.augment import (
    AugmentSettings,
    VariantDraw,
    apply_variant,
    augment_variant,
    check_augment_value,
    draw_variant,
    variant_stem,
)

RATE = 16000


def _tone(freq: float, seconds: float, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _rms_db(wave: np.ndarray) -> float:
    return 20 * math.log10(float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))))


def _peak_hz(wave: np.ndarray) -> float:
    """The strongest frequency (Hann window, 16x zero-padded FFT: ~0.04 Hz bins on 1.5 s)."""
    n = len(wave) * 16
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)), n))
    return float(np.argmax(spectrum)) * RATE / n


def _active_samples(wave: np.ndarray) -> int:
    """Samples up to the last one above -60 dBFS relative to the peak (the sounding length)."""
    above = np.nonzero(np.abs(wave) > np.abs(wave).max() * 1e-3)[0]
    return int(above[-1]) + 1


def test_defaults_are_the_nodes_and_off():
    s = AugmentSettings()
    assert not s.enabled and s.applied() == {"enabled": False}
    assert (s.variants, s.gain_db, s.pitch_semitones, s.stretch, s.seed, s.keep_originals) == (2, 3.0, 0.0, 0.0,
                                                                                               42, True)


def test_plus_3_db_raises_the_rms_by_3_db():
    wave = _tone(440, 2.0, 0.1)
    out = apply_variant(wave, RATE, VariantDraw(gain_db=3.0, semitones=0.0, speed=1.0))
    assert _rms_db(out) - _rms_db(wave) == pytest.approx(3.0, abs=0.01)
    assert out.shape == wave.shape and out.dtype == np.float32


def test_plus_2_semitones_moves_a_sine_by_2_to_the_2_over_12_and_keeps_the_duration():
    wave = _tone(440, 2.0, 0.1)
    out = apply_variant(wave, RATE, VariantDraw(gain_db=0.0, semitones=2.0, speed=1.0))
    middle = slice(RATE // 4, -RATE // 4)  # away from the stretcher's start-up and tail
    assert _peak_hz(out[middle]) == pytest.approx(440 * 2 ** (2 / 12), rel=2e-3)
    assert _active_samples(out) >= len(wave) - RATE // 50


def test_a_faster_stretch_shortens_the_sound_keeps_its_pitch_and_the_clip_length():
    wave = _tone(440, 2.0, 0.1)
    out = apply_variant(wave, RATE, VariantDraw(gain_db=0.0, semitones=0.0, speed=1.1))
    assert out.shape == wave.shape  # fitted back: padded with silence at the end
    assert _active_samples(out) == pytest.approx(len(wave) / 1.1, rel=0.01)
    assert _peak_hz(out[RATE // 4: RATE]) == pytest.approx(440.0, rel=2e-3)
    slower = apply_variant(wave, RATE, VariantDraw(gain_db=0.0, semitones=0.0, speed=0.9))
    assert slower.shape == wave.shape and _active_samples(slower) == len(wave)  # cut to the clip


def test_a_variant_never_clips():
    out = apply_variant(_tone(440, 1.0, 0.9), RATE, VariantDraw(gain_db=12.0, semitones=0.0, speed=1.0))
    assert float(np.abs(out).max()) == pytest.approx(1.0, abs=1e-6)


def test_draws_are_deterministic_per_seed_clip_and_index_and_within_the_ranges():
    s = AugmentSettings(enabled=True, gain_db=3.0, pitch_semitones=2.0, stretch=0.1)
    draws = [draw_variant(s, stem, i) for stem in ("a", "b") for i in (1, 2, 3)]
    assert draw_variant(s, "a", 1) == draws[0]
    assert len({d.gain_db for d in draws}) == len(draws)  # every (clip, index) its own draw
    assert draw_variant(AugmentSettings(enabled=True, seed=7), "a", 1) != draw_variant(
        AugmentSettings(enabled=True, seed=8), "a", 1)
    assert all(abs(d.gain_db) <= 3 and abs(d.semitones) <= 2 and 0.9 <= d.speed <= 1.1 for d in draws)
    plain = draw_variant(AugmentSettings(enabled=True), "a", 1)
    assert plain.semitones == 0.0 and plain.speed == 1.0  # the node's default: gain only
    wave = _tone(300, 1.0, 0.1)
    assert np.array_equal(augment_variant(wave, RATE, s, "a", 2), augment_variant(wave, RATE, s, "a", 2))
    assert not np.array_equal(augment_variant(wave, RATE, s, "a", 1), augment_variant(wave, RATE, s, "a", 2))


def test_the_digest_follows_what_decides_the_audio_only():
    s = AugmentSettings(enabled=True)
    assert s.digest() == AugmentSettings(enabled=True, variants=5, keep_originals=False).digest()
    assert s.digest() != AugmentSettings(enabled=True, gain_db=2.0).digest()
    assert s.digest() != AugmentSettings(enabled=True, seed=1).digest()
    assert variant_stem("door", 1) == "door@aug01"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("stretch", 0.2, "stretch: out of range (got 0.2, expected 0 to 0.1)"),
    ("variants", 0, "variants: out of range (got 0, expected 1 to 20)"),
    ("variants", 2.5, "variants: expected an integer from 1 to 20 (got 2.5)"),
    ("gain_db", "3", "gain_db: expected a number in [0, 12] (got '3')"),
    ("keep_originals", 1, "keep_originals: expected true or false (got 1)"),
])
def test_bad_values_say_the_range(key, value, message):
    with pytest.raises(ValueError) as err:
        check_augment_value(key, value)
    assert str(err.value) == message
    with pytest.raises(ValueError, match="unknown \\[augment\\] key 'pitch'"):
        AugmentSettings.from_dict({"pitch": 1.0})
    assert AugmentSettings.from_dict({"enabled": True, "gain_db": 2}).gain_db == 2.0
