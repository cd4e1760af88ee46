"""End to end on tiny weights: waveform -> mel -> VAE latent (B, N, C) -> mel -> vocoder -> waveform."""

from __future__ import annotations

import math

import pytest
import torch

from selva_engine.audio.codec import load_audio_codec
from selva_engine.audio.vae import VaeLoadError
from selva_engine.model.variants import get_variant
from selva_engine.weights import locate as W
from selva_engine.weights.tiny import make_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("selva")
    make_tiny(root, "tiny_16k", seed=0)
    make_tiny(root, "tiny_44k", seed=0)
    return root


def _clip(samples: int, sr: int, batch: int = 2) -> torch.Tensor:
    t = torch.arange(samples) / sr
    tones = [0.4 * torch.sin(2 * math.pi * f * t) for f in (220.0, 1330.0)][:batch]
    return torch.stack(tones)  # (B, T) in [-1, 1]


@pytest.mark.parametrize(("name", "samples", "latents"),
                         [("tiny_16k", 128000, 250), ("tiny_44k", 353280, 345)])
def test_round_trip(tiny_dir, name, samples, latents):
    variant = get_variant(name)
    assert variant.sequence().num_audio_frames == samples
    codec = load_audio_codec(variant, W.resolve(tiny_dir, name), "cpu")
    mean, std = codec.encode(_clip(samples, codec.sampling_rate))
    assert mean.shape == std.shape == (2, latents, variant.latent_dim)  # channel-last (B, N, C)
    assert mean.dtype == torch.float32 and (std > 0).all()
    mel = codec.decode_mel(mean)
    assert mel.shape == (2, variant.audio.n_mels, 2 * latents)
    wave = codec.decode(mean)
    assert wave.shape == (2, samples) and wave.dtype == torch.float32
    assert torch.isfinite(wave).all() and wave.abs().max() <= 1.0


def test_44k_short_clip_floors(tiny_dir):
    """352800 samples (8 s * 44100, ComfyUI's length) give 689 mel frames -> 344 latents."""
    codec = load_audio_codec(get_variant("tiny_44k"), W.resolve(tiny_dir, "tiny_44k"),
                             need_vocoder=False)
    mean, _ = codec.encode(_clip(352800, 44100, batch=1))
    assert mean.shape[1] == 344


def test_identity_and_partial_loading(tiny_dir, tmp_path):
    v16, v44 = get_variant("tiny_16k"), get_variant("tiny_44k")
    w16 = W.resolve(tiny_dir, "tiny_16k")
    a = load_audio_codec(v16, w16, need_vocoder=False)
    b = load_audio_codec(v16, w16, need_encoder=False)
    assert a.identity == b.identity  # a cache key of the encoder, independent of the vocoder
    assert a.identity != load_audio_codec(v44, W.resolve(tiny_dir, "tiny_44k")).identity
    with pytest.raises(RuntimeError, match="vocoder"):
        a.decode(torch.zeros(1, 4, v16.latent_dim))
    with pytest.raises(RuntimeError, match="encoder"):
        b.encode(torch.zeros(1, 2048))
    other = make_tiny(tmp_path, "tiny_16k", seed=5)
    assert load_audio_codec(v16, other, need_vocoder=False).identity != a.identity
    a.free()
    with pytest.raises(RuntimeError, match="freed"):
        a.encode(torch.zeros(1, 2048))


def test_wrong_mode_files_are_refused(tiny_dir):
    w44 = W.resolve(tiny_dir, "tiny_44k")
    with pytest.raises(VaeLoadError, match="data_mean"):
        load_audio_codec(get_variant("tiny_16k"), w44)  # the 44k VAE for a 16k variant
