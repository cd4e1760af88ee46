"""Batched CFG equals the two-pass result; several clips in one batch sound as each alone."""

from __future__ import annotations

import numpy as np
import torch

from selva_engine.model.variants import get_variant


def test_batched_cfg_equals_two_passes(tiny_weights):
    from selva_engine.model.generator import load_generator
    from selva_engine.weights.locate import resolve

    v = get_variant("tiny_16k")
    model = load_generator(resolve(tiny_weights, "tiny_16k").generator, v, duration=2.0)
    s = v.sequence(2.0)
    g = torch.Generator().manual_seed(0)
    clip = torch.randn(2, s.clip_seq_len, v.clip_dim, generator=g)
    sync = torch.randn(2, s.sync_seq_len, v.sync_dim, generator=g)
    text = torch.randn(2, 77, model.empty_string_feat.shape[-1], generator=g)
    x = torch.randn(2, s.latent_seq_len, v.latent_dim, generator=g)
    t = torch.full((2,), 0.3)
    with torch.no_grad():
        cond = model.preprocess_conditions(clip, sync, text)
        empty = model.empty_conditions(2)
        batched = model.guided_flow(x, t, cond, empty, 4.5)
        two = 4.5 * model.predict_flow(x, t, cond) + (1 - 4.5) * model.predict_flow(x, t, empty)
    assert torch.allclose(batched, two, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched, model.predict_flow(x, t, cond), atol=1e-3)


def test_a_batch_of_clips_sounds_as_each_clip_alone(tiny_weights):
    from selva_engine.inference.synth import Clip, Synthesizer

    synth = Synthesizer("tiny_16k", tiny_weights, device="cpu", duration=1.0)
    s = synth.variant.sequence(1.0)
    rng = np.random.default_rng(1)
    clips = [Clip(rng.standard_normal((s.clip_seq_len, 1024)).astype(np.float32),
                  rng.standard_normal((s.sync_seq_len, 768)).astype(np.float32),
                  prompt, seed, 1.0) for prompt, seed in (("a dog", 3), ("rain", 4))]
    together = synth.generate_batch(clips, steps=2, negative_prompt="speech")
    alone = [synth.generate(c.clip, c.sync, c.prompt, seed=c.seed, steps=2, negative_prompt="speech")
             for c in clips]
    for a, b in zip(together, alone, strict=True):
        assert a.shape == (s.num_audio_frames,)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    assert not np.allclose(together[0], together[1], atol=1e-3)
