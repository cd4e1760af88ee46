"""The generator's fast paths: attention inputs a fused SDPA kernel accepts, channel-last
convolutions as one GEMM in both forms (equal to nn.Conv1d, same weights), windows shared by
a ConvMLP's two input convolutions, RoPE as a complex product, torch.compile of the blocks
(for real), and activation checkpointing (same loss and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selva_engine.model.generator import Generator
from selva_engine.model.layers import ChannelLastConv1d, ConvMLP, apply_rope, rope_table
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


def tiny_with_lora() -> Generator:
    """tiny() in training mode with rank-4 LoRA on attn.qkv, B != 0 (so every weight has a gradient)."""
    model = tiny()
    apply_lora(model, rank=4, targets=["attn.qkv"], dtype=torch.float32,
               generator=torch.Generator().manual_seed(5))
    for p in lora_parameters(model)[1]:
        nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(6))
    return model.train()


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
@pytest.mark.parametrize(("c_in", "c_out", "tokens"), [(12, 20, 17), (20, 12, 17), (20, 12, 2)])
def test_channel_last_conv_equals_conv1d_with_the_same_weights(k, p, c_in, c_out, tokens):
    """Widening (windows) and narrowing (taps) forms, also with fewer tokens than taps."""
    torch.manual_seed(0)
    conv = ChannelLastConv1d(c_in, c_out, k, padding=p)
    if tokens + 2 * p < k:  # shorter than the kernel: refused like nn.Conv1d refuses it
        with pytest.raises(RuntimeError, match="Kernel size can't be greater"):
            conv(torch.randn(3, tokens, c_in))
        return
    ref = nn.Conv1d(c_in, c_out, k, padding=p)
    ref.load_state_dict(conv.state_dict())
    assert list(conv.state_dict()) == ["weight", "bias"] and conv.weight.shape == (c_out, c_in, k)
    x = torch.randn(3, tokens, c_in, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    y, y_ref = conv(x), ref(x_ref.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(conv.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("c_in", "c_out"), [(32, 48), (48, 32)])
def test_channel_last_conv_under_bf16_autocast_matches_conv1d(c_in, c_out):
    torch.manual_seed(0)
    conv = ChannelLastConv1d(c_in, c_out, 3, padding=1)
    x = torch.randn(2, 40, c_in)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        y_ref = F.conv1d(x.transpose(1, 2), conv.weight, conv.bias, padding=1).transpose(1, 2)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), atol=3e-2, rtol=2e-2)


def test_conv_mlp_with_shared_windows_equals_its_three_convolutions():
    torch.manual_seed(0)
    mlp = ConvMLP(16, 64, kernel_size=3, padding=1)
    x = torch.randn(2, 11, 16, requires_grad=True)
    y = mlp(x)

    def conv(layer, h):
        return F.conv1d(h.transpose(1, 2), layer.weight, layer.bias, padding=1).transpose(1, 2)

    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = conv(mlp.w2, F.silu(conv(mlp.w1, x_ref)) * conv(mlp.w3, x_ref))
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_as_complex_product_equals_the_rotation_matrices(dtype):
    table = rope_table(10, 16, freq_scale=0.5)  # (1, T, d/2, 2, 2)
    x = torch.randn(2, 3, 10, 16).to(dtype).requires_grad_(True)
    pairs = x.detach().float().reshape(2, 3, 10, 8, 2, 1)
    expected = (table @ pairs).reshape(x.shape)  # each pair times its 2x2 rotation matrix
    y = apply_rope(x, table)
    assert y.dtype == dtype
    ulp = {torch.float32: 1e-6, torch.bfloat16: 8e-3}[dtype]  # fp32 math, one rounding to dtype
    torch.testing.assert_close(y.float(), expected, atol=1e-6, rtol=ulp)
    g = torch.randn(x.shape).to(dtype)
    y.backward(g)  # the gradient is the inverse rotation: the transposed matrices
    back = (table.transpose(-1, -2) @ g.float().reshape(2, 3, 10, 8, 2, 1)).reshape(x.shape)
    torch.testing.assert_close(x.grad.float(), back, atol=1e-6, rtol=ulp)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_blocks_give_the_eager_loss_and_gradients(precision):
    """torch.compile for real (inductor's CPU code generator): no fallback, same numbers.

    bf16 is compared only on a CPU with native bf16: elsewhere inductor emulates it with
    other roundings than eager's (grads 5.6 % apart on an AMD EPYC without AVX512-BF16), and
    the trainer never runs bf16 there (effective_precision falls back to fp32)."""
    from selva_engine.training.acceleration import compile_blocks
    from selva_engine.training.loop import cpu_has_native_bf16

    if precision == "bf16" and not cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX512-BF16/AMX): training runs fp32 here, "
                    "so the compiled bf16 path is never used on it")

    results = []
    for compiled in (False, True):
        model = tiny_with_lora()
        if compiled:
            compile_blocks(model)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(*inputs(model)).float().square().mean()
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for group in lora_parameters(model) for p in group]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    tol = {"fp32": (1e-5, 1e-4), "bf16": (2e-2, 5e-2)}[precision]  # fused kernels round differently
    torch.testing.assert_close(loss_a, loss_b, rtol=tol[0], atol=0)
    for a, b in zip(grads_a, grads_b, strict=True):
        assert torch.linalg.vector_norm(a - b) <= tol[1] * torch.linalg.vector_norm(a)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        model = tiny_with_lora()
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
