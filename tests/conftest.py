"""Shared fixtures: where the reference goldens live."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# The Ray tests' clusters live on this machine alone: with this (Ray's own switch, read when
# ray is imported, so before any test module imports it; children inherit it) every Ray
# process and driver binds and dials the loopback address, never the machine's LAN address.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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
    from selva_engine.weights.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny-weights")
    make_tiny(root, "tiny_16k", seed=0)
    return root


def make_broken_torchaudio(root: Path) -> Path:
    """A copy of the installed torchaudio under `root` whose native library does not load
    (the file is replaced by text), as after installing a torchaudio built for another torch.
    Every other file is a symlink to the real one. Returns the directory to put first on
    PYTHONPATH of a child process, which then imports this torchaudio."""
    import importlib.util

    spec = importlib.util.find_spec("torchaudio")
    assert spec is not None and spec.origin is not None
    real = Path(spec.origin).parent
    fake = root / "torchaudio"
    for src in real.rglob("*"):
        if "__pycache__" in src.parts or src.is_dir():
            continue
        dst = fake / src.relative_to(real)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.parent.name == "lib" and src.name.startswith("libtorchaudio"):
            dst.write_text("not a shared library\n")
        else:
            dst.symlink_to(src)
    return root


@pytest.fixture(scope="session")
def broken_torchaudio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for a child process that imports a torchaudio whose library fails to load."""
    root = make_broken_torchaudio(tmp_path_factory.mktemp("broken_torchaudio"))
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}
