"""The generator's fast paths: attention inputs a fused SDPA kernel accepts, kernel-3
channel-last convolutions as one GEMM (equal to nn.Conv1d, same weights), and activation
checkpointing (same loss and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selva_engine.model.generator import Generator
from selva_engine.model.layers import ChannelLastConv1d
from selva_engine.model.lora import apply_lora, lora_parameters
from selva_engine.model.variants import get_variant


def tiny(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    model = Generator(**get_variant("tiny_16k").generator_kwargs())
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        model.latent_std.fill_(1.0)
        model.latent_mean.zero_()
    return model.requires_grad_(False)


def inputs(model: Generator, batch: int = 2) -> tuple[torch.Tensor, ...]:
    v, s = get_variant("tiny_16k"), get_variant("tiny_16k").sequence()
    g = torch.Generator().manual_seed(3)
    return (torch.randn(batch, s.latent_seq_len, v.latent_dim, generator=g),
            torch.randn(batch, s.clip_seq_len, v.clip_dim, generator=g),
            torch.randn(batch, s.sync_seq_len, v.sync_dim, generator=g),
            torch.randn(batch, v.text_seq_len, v.text_dim, generator=g),
            torch.rand(batch, generator=g))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_attention_call_gets_fused_kernel_inputs(monkeypatch, dtype):
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, *args, **kwargs):
        calls.append(dict(dtypes={q.dtype, k.dtype, v.dtype}, strides=(q.stride(-1), k.stride(-1), v.stride(-1)),
                          args=args, mask=kwargs.get("attn_mask"), causal=kwargs.get("is_causal", False),
                          q_tokens=q.shape[2]))
        return real(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    model = tiny()
    apply_lora(model, rank=4, targets=["attn.qkv"], dtype=torch.float32)
    model.train()
    with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        model(*inputs(model)).float().sum().backward()
    joint, fused = len(model.joint_blocks), len(model.fused_blocks)
    assert len(calls) == joint + fused  # one per joint block (pre-only included), one per fused
    for call in calls:
        assert call["dtypes"] == {dtype}, call
        assert call["strides"] == (1, 1, 1), call  # unit-stride last dim: q, k and v
        assert call["args"] == () and call["mask"] is None and not call["causal"], call
    n = model.latent_seq_len
    assert calls[joint - 1]["q_tokens"] == n  # the pre-only block: latent queries only
    assert all(c["q_tokens"] == n for c in calls[joint:])  # fused blocks: latent tokens


@pytest.mark.parametrize(("k", "p"), [(3, 1), (7, 3), (1, 0), (3, 0)])
def test_channel_last_conv_equals_conv1d_with_the_same_weights(k, p):
    torch.manual_seed(0)
    conv = ChannelLastConv1d(12, 20, k, padding=p)
    ref = nn.Conv1d(12, 20, k, padding=p)
    ref.load_state_dict(conv.state_dict())
    assert list(conv.state_dict()) == ["weight", "bias"] and conv.weight.shape == (20, 12, k)
    x = torch.randn(3, 17, 12, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = conv(x), ref(x_ref.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


def test_channel_last_conv_under_bf16_autocast_matches_conv1d():
    torch.manual_seed(0)
    conv = ChannelLastConv1d(32, 48, 3, padding=1)
    x = torch.randn(2, 40, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        y_ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=1).transpose(1, 2)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), atol=3e-2, rtol=2e-2)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = tiny()
        apply_lora(model, rank=4, targets=["attn.qkv"], dtype=torch.float32,
                   generator=torch.Generator().manual_seed(5))
        for p in lora_parameters(model)[1]:
            nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(6))  # B != 0
        model.train()
        model.gradient_checkpointing = checkpointing
        loss = model(*inputs(model)).square().mean()
        loss.backward()
        grads = [p.grad.clone() for group in lora_parameters(model) for p in group]
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=0, rtol=0)
    assert len(grads_a) == len(grads_b) > 0
    for a, b in zip(grads_a, grads_b, strict=True):
        assert a.abs().sum() > 0
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_is_off_without_grad():
    model = tiny()
    model.gradient_checkpointing = True
    with torch.no_grad():
        out = model(*inputs(model))
    model.gradient_checkpointing = False
    with torch.no_grad():
        torch.testing.assert_close(out, model(*inputs(model)), atol=0, rtol=0)
