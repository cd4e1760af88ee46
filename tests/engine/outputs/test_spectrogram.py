"""The spectrogram pictures of samples: levels in dBFS on a fixed scale, a small PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from selva_engine.outputs.spectrogram import DB_RANGE, N_MELS, log_mel, write_spectrogram

SR = 16000


def _tone(hz: float, amplitude: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return amplitude * np.sin(2 * np.pi * hz * t)


def test_levels_are_absolute_and_the_tone_sits_in_its_band() -> None:
    loud, quiet = log_mel(_tone(1000, 1.0), SR), log_mel(_tone(1000, 0.01), SR)
    assert loud.shape[0] == N_MELS and loud.shape[1] > 100  # (bands, frames)
    band = int(np.argmax(loud.mean(axis=1)))
    assert abs(loud[band].mean()) < 3  # a full-scale sine reads about 0 dBFS
    assert abs((loud[band] - quiet[band]).mean() - 40) < 0.5  # 1/100 of the level: -40 dB
    # the band's centre frequency is the tone's (mel scale, 0..Nyquist)
    mel = np.linspace(0, 2595 * np.log10(1 + 8000 / 700), N_MELS + 2)[band + 1]
    assert abs(700 * (10 ** (mel / 2595) - 1) - 1000) < 60
    assert log_mel(np.zeros(SR), SR).max() < DB_RANGE[0]  # silence is below the scale


def test_picture_is_a_small_png(tmp_path) -> None:
    rng = np.random.default_rng(0)
    noise = 0.05 * rng.standard_normal(8 * SR)  # the worst case for PNG compression
    path = write_spectrogram(tmp_path / "sample_step00010.png", noise, SR, "sample at step 10")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 100_000
    width, height = Image.open(io.BytesIO(data)).size
    assert 400 < width < 700 and 150 < height < 300
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically
