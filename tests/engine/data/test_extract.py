"""Extraction without real encoders: cache hits, progress across both stages, stop mid-way."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from selva_engine.data.dataset import load_dataset
from selva_engine.data.extract import FeatureCache, extract_clips
from selva_engine.model.variants import get_variant


class FakeCodec:
    """Stands in for the VAE: posterior (B, N, L) filled with the batch size."""

    def __init__(self) -> None:
        self.freed = False

    def encode(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = wave.shape[0]
        return torch.full((b, 5, 3), float(b)), torch.ones(b, 5, 3)

    def free(self) -> None:
        self.freed = True


class FakeText:
    def encode(self, prompts: list[str]) -> torch.Tensor:
        return torch.stack([torch.full((7, 4), float(len(p))) for p in prompts])  # (B, Nt, D)


def refuse():
    raise AssertionError("an encoder must not be loaded when everything is cached")


@pytest.fixture()
def setup(tmp_path, make_clips):
    variant = get_variant("tiny_16k")
    clips = load_dataset(make_clips(tmp_path / "data", 4), variant).clips
    (tmp_path / "vae.pt").write_bytes(b"vae")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "w.bin").write_bytes(b"text")
    weights = SimpleNamespace(vae=tmp_path / "vae.pt", text_encoder=tmp_path / "text")
    return clips, variant, weights, FeatureCache(tmp_path / "cache")


def test_progress_counts_both_stages_and_rerun_hits_the_cache(setup):
    clips, variant, weights, cache = setup
    events, codec = [], FakeCodec()
    out, extra, stats = extract_clips(clips, variant, weights=weights, cache=cache, batch_size=3,
                                      extra_prompts=["hiss"], progress=events.append,
                                      codec_factory=lambda: codec, text_factory=FakeText)
    assert [(e["stage"], e["done"], e["total"]) for e in events] == [
        ("audio", 3, 9), ("audio", 4, 9), ("text", 7, 9), ("text", 9, 9)]  # 4 clips, 4 + 1 prompts
    assert (stats.audio_encoded, stats.text_encoded, stats.encoder_batches) == (4, 5, 4) and codec.freed
    assert [c.stem for c in out] == [c.stem for c in clips] and set(extra) == {"hiss"}
    assert out[3].latent_mean.shape == (5, 3) and out[3].latent_mean[0, 0] == 1.0  # the batch of one
    again, extra2, stats2 = extract_clips(clips, variant, weights=weights, cache=cache, batch_size=3,
                                          extra_prompts=["hiss"], codec_factory=refuse, text_factory=refuse)
    assert (stats2.audio_cached, stats2.text_cached, stats2.encoder_batches) == (4, 5, 0)
    assert all((a.latent_mean == b.latent_mean).all() and (a.text == b.text).all() for a, b in zip(out, again, strict=True))
    assert (extra2["hiss"] == extra["hiss"]).all()


def test_stop_after_a_batch_keeps_what_was_encoded(setup):
    clips, variant, weights, cache = setup
    stop = threading.Event()
    out, extra, stats = extract_clips(clips, variant, weights=weights, cache=cache, batch_size=3,
                                      progress=lambda e: stop.set(), codec_factory=FakeCodec,
                                      text_factory=FakeText, stop=stop)
    assert (out, extra) == ([], {}) and (stats.audio_encoded, stats.text_encoded) == (3, 0)
    out, _, stats = extract_clips(clips, variant, weights=weights, cache=cache, batch_size=3,
                                  codec_factory=FakeCodec, text_factory=FakeText)
    assert len(out) == 4 and (stats.audio_cached, stats.audio_encoded, stats.text_encoded) == (3, 1, 4)
