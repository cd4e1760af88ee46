"""Shared fixtures: where the reference goldens live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def golden_path() -> Path:
    """SELVA_GOLDEN_DIR, default ../shared/golden next to the repository."""
    return Path(os.environ.get("SELVA_GOLDEN_DIR", REPO_ROOT.parent / "shared" / "golden")).resolve()


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    path = golden_path()
    if not path.is_dir():
        pytest.skip(f"golden directory {path} does not exist (set SELVA_GOLDEN_DIR)")
    return path


def write_clip(directory: Path, stem: str, *, freq: float, sr: int = 16000, seconds: float = 8.0,
               seed: int = 0, prompt: str | None = None, audio_ext: str = "wav") -> None:
    """One synthetic clip: a modulated tone `stem.<audio_ext>` + features `stem.npz`.

    The features are random but fixed per seed, shaped as the SelVA Feature Extractor writes
    them: clip_features (1, 64, 1024), sync_features (1, 192, 768), optional 0-d prompt.
    """
    import numpy as np
    import soundfile as sf

    directory.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))
    sf.write(directory / f"{stem}.{audio_ext}", wave.astype(np.float32), sr)
    rng = np.random.default_rng(seed)
    arrays = {
        "clip_features": rng.standard_normal((1, 64, 1024)).astype(np.float32),
        "sync_features": rng.standard_normal((1, 192, 768)).astype(np.float32),
        "duration": np.array(seconds),
    }
    if prompt is not None:
        arrays["prompt"] = np.array(prompt)
    np.savez(directory / f"{stem}.npz", **arrays)


@pytest.fixture(scope="session")
def make_clips():
    """Factory: make_clips(dir, n) writes n synthetic clips (tones of different pitch)."""

    def make(directory: Path, n: int, *, sr: int = 16000, start: int = 0) -> Path:
        for i in range(start, start + n):
            write_clip(Path(directory), f"clip{i:02d}", freq=220.0 * (1 + i % 5), sr=sr, seed=i,
                       prompt=f"tone number {i}")
        return Path(directory)

    return make


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A complete tiny_16k weights directory in the real layout (made once per session)."""
    from selva_engine.weights import make_tiny

    root = tmp_path_factory.mktemp("tiny-weights")
    make_tiny(root, "tiny_16k", seed=0)
    return root
