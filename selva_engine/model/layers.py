"""Building blocks of the MM-DiT generator: convolutions, SwiGLU MLPs, time embedding,
RoPE, attention and the single / joint transformer blocks.

Every module name and parameter shape follows the published SelVA / MMAudio checkpoints
(see SELVA-FACTS.md section 3), so `state_dict()` keys line up one to one.
Tensors are channel-last: (B, T, C).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ChannelLastConv1d",
    "ConvMLP",
    "FinalBlock",
    "JointBlock",
    "MLP",
    "SelfAttention",
    "SingleBlock",
    "TimestepEmbedder",
    "apply_rope",
    "attention",
    "attention_backend",
    "modulate",
    "rope_table",
    "swiglu_width",
]


def swiglu_width(hidden: int, multiple_of: int = 256) -> int:
    """SwiGLU hidden width for a requested width: ceil to `multiple_of` of int(2*hidden/3)."""
    h = int(2 * hidden / 3)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


class ChannelLastConv1d(nn.Conv1d):
    """A Conv1d applied to (B, T, C) input; returns (B, T, C_out).

    A length-preserving convolution (stride 1, 2 * padding = kernel - 1) stays channel-last,
    without the (B, T, C) <-> (B, C, T) layout transposes a cuDNN conv adds around itself, as
    one GEMM in whichever of two forms moves less memory:
    - widening (C_out >= C): the (B, T, C*k) matrix of the k shifted copies of the zero-padded
      input meets the weight (C_out, C, k) viewed as (C_out, C*k);
    - narrowing (C_out < C): the input meets all k taps at once, (B, T, C) x (C, k*C_out), and
      the k output slices are added shifted by their tap offsets (k*C_out wide instead of k*C).
    Autograd's backward of either form is the other form in the opposite direction, so the
    backward is cheap too. The weight and bias keep nn.Conv1d's names and shapes (checkpoints
    load unchanged); any other geometry runs nn.Conv1d on the transposed input.
    """

    def same_length(self) -> bool:
        """True for the stride-1, length-preserving geometry computed as a GEMM."""
        (k,), (p,) = self.kernel_size, self.padding
        return self.stride == (1,) and self.dilation == (1,) and self.groups == 1 and 2 * p == k - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same_length():
            return super().forward(x.transpose(1, 2)).transpose(1, 2)
        if self.kernel_size == (1,):
            return F.linear(x, self.weight[:, :, 0], self.bias)
        if self.out_channels < self.in_channels:
            return self.taps(x)
        return self.from_windows(self.windows(x))

    def windows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, C*k): window j of token t is the padded input at t + j.
        Cast once under autocast, before the k-fold copy; stack (not unfold) keeps the
        backward a cheap slice sum."""
        (k,), (p,) = self.kernel_size, self.padding
        x = _autocast_input(x)
        padded = F.pad(x, (0, 0, p, p))  # (B, T + 2p, C)
        t = x.shape[1]
        return torch.stack([padded[:, j : j + t] for j in range(k)], dim=-1).flatten(2)

    def from_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """The convolution's output from `windows(x)` (shared by convolutions of one input)."""
        weight = self.weight.reshape(self.out_channels, -1)  # (C_out, C*k), a view
        return F.linear(windows, weight, self.bias)

    def taps(self, x: torch.Tensor) -> torch.Tensor:
        """The narrowing form: every tap's output at once, then the shifted sum."""
        (k,), (p,) = self.kernel_size, self.padding
        x = _autocast_input(x)
        n, t = self.out_channels, x.shape[1]
        z = F.linear(x, self.weight.permute(2, 0, 1).reshape(k * n, self.in_channels))  # (B, T, k*C_out)
        parts = [(j - p, z[..., j * n : (j + 1) * n]) for j in range(k) if abs(j - p) < t]
        if torch.compiler.is_compiling():
            # inductor fuses the padded slices into one kernel (and its CPU code generator
            # rejects the in-place form below in bf16, torch 2.11)
            y = sum(_shift(zj, s) for s, zj in parts)
        else:
            y = z[..., p * n : (p + 1) * n].contiguous()
            for s, zj in parts:  # output token i takes tap j's output at token i + s
                if s > 0:
                    y[:, : t - s] += zj[:, s:]
                elif s < 0:
                    y[:, -s:] += zj[:, : t + s]
        return y if self.bias is None else y + self.bias.to(y.dtype)


def _shift(z: torch.Tensor, s: int) -> torch.Tensor:
    """z (B, T, C) with token i + s at position i (zeros where i + s falls outside)."""
    if s == 0:
        return z
    t = z.shape[1]
    return F.pad(z[:, s:], (0, 0, 0, s)) if s > 0 else F.pad(z[:, : t + s], (0, 0, -s, 0))


def _autocast_input(x: torch.Tensor) -> torch.Tensor:
    """x in autocast's dtype when autocast is on (the GEMM would cast it anyway)."""
    if torch.is_autocast_enabled(x.device.type):
        return x.to(torch.get_autocast_dtype(x.device.type))
    return x


class MLP(nn.Module):
    """Bias-free SwiGLU feed-forward: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        width = swiglu_width(hidden_dim)
        self.w1 = nn.Linear(dim, width, bias=False)
        self.w2 = nn.Linear(width, dim, bias=False)
        self.w3 = nn.Linear(dim, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class ConvMLP(nn.Module):
    """SwiGLU feed-forward with bias-free channel-last convolutions of kernel k."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 3, padding: int = 1) -> None:
        super().__init__()
        width = swiglu_width(hidden_dim)
        self.w1 = ChannelLastConv1d(dim, width, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(width, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, width, kernel_size, padding=padding, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w1, w3 = self.w1, self.w3
        if w1.same_length() and w1.kernel_size != (1,) and w1.out_channels >= w1.in_channels:
            windows = w1.windows(x)  # w1 and w3 read the same windows: build them once
            return self.w2(F.silu(w1.from_windows(windows)) * w3.from_windows(windows))
        return self.w2(F.silu(w1(x)) * w3(x))


class TimestepEmbedder(nn.Module):
    """Sinusoidal embedding of the raw flow time t in [0, 1] followed by a 2-layer MLP.

    Frequencies f_k = (10000 / max_period) * 10000^(-2k / F), k < F/2; embedding is
    [cos(t f) | sin(t f)] computed in fp32 and cast to t's dtype. v1: F = 256, max_period
    10000; v2: F = hidden_dim, max_period 1.
    """

    def __init__(self, dim: int, frequency_embedding_size: int = 256, max_period: float = 10000) -> None:
        super().__init__()
        self.dim = dim
        self.frequency_embedding_size = frequency_embedding_size
        self.max_period = max_period
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, dim),
            nn.SiLU(),
            nn.Linear(dim, dim),
        )
        self.register_buffer("freqs", self._frequencies(), persistent=False)

    def _frequencies(self) -> torch.Tensor:
        fes = self.frequency_embedding_size
        exponents = torch.arange(0, fes, 2, dtype=torch.float32)[: fes // 2] / fes
        return (10000 / self.max_period) / (10000**exponents)

    def reset_buffers(self) -> None:
        """Recompute the frequency table (after construction on the meta device)."""
        self.freqs = self._frequencies().to(self.mlp[0].weight.device)

    def frequency_features(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, F) sinusoidal features."""
        args = t[:, None].float() * self.freqs[None].float()
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = self.frequency_features(t).to(self.mlp[0].weight.dtype)
        return self.mlp(feats)


def rope_table(length: int, head_dim: int, freq_scale: float = 1.0) -> torch.Tensor:
    """RoPE rotation matrices (1, length, head_dim/2, 2, 2), fp32.

    Pair k at position n is rotated by n * freq_scale * 10000^(-2k/head_dim).
    """
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float32)[: head_dim // 2] / head_dim))
    inv = inv * freq_scale
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv)  # (length, head_dim/2)
    cos, sin = torch.cos(angles), torch.sin(angles)
    table = torch.stack([cos, -sin, sin, cos], dim=-1).reshape(length, head_dim // 2, 2, 2)
    return table.unsqueeze(0)


def apply_rope(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs of x (B, H, T, d) by `table` (1, T, d/2, 2, 2); fp32 math.

    Pair (a, b) rotated by angle w is the complex product (a + ib) * e^(iw): one fp32 kernel
    forward and one (by the conjugate) backward, where the 2x2 matrix product of the table
    costs a broadcast and a reduction each way.
    """
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())
    rotation = torch.view_as_complex(table[..., 0].float().contiguous())  # (1, T, d/2): cos + i sin
    return torch.view_as_real(pairs * rotation).reshape(x.shape).to(x.dtype)


_ATTENTION_BACKEND = "sdpa"


@contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Temporarily switch attention: "sdpa" (fused kernels) or "naive" (explicit per-head
    softmax(QK^T / sqrt(d)) V, kept only as the benchmark baseline)."""
    global _ATTENTION_BACKEND
    if name not in ("sdpa", "naive"):
        raise ValueError(f"unknown attention backend {name!r}; expected 'sdpa' or 'naive'")
    previous, _ATTENTION_BACKEND = _ATTENTION_BACKEND, name
    try:
        yield
    finally:
        _ATTENTION_BACKEND = previous


def _naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    heads = []
    for h in range(q.shape[1]):
        scores = q[:, h] @ k[:, h].transpose(-1, -2) / math.sqrt(q.shape[-1])  # (B, T, T)
        heads.append(torch.softmax(scores.float(), dim=-1).to(v.dtype) @ v[:, h])
    return torch.stack(heads, dim=1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Full bidirectional attention over (B, H, T, d); returns (B, T, H*d) head-major."""
    if _ATTENTION_BACKEND == "naive":
        out = _naive_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    b, h, t, d = out.shape
    return out.transpose(1, 2).reshape(b, t, h * d)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation x * (1 + scale) + shift (broadcast over tokens when T == 1)."""
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """q/k/v projection with per-head RMS normalisation of q and k.

    The qkv Linear output is interleaved as (head, channel, j) with j in {q, k, v} fastest.
    RMSNorm eps is None, i.e. the machine epsilon of the input dtype.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.RMSNorm(head_dim, eps=None)
        self.k_norm = nn.RMSNorm(head_dim, eps=None)

    def pre_attention(
        self, x: torch.Tensor, rot: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, D) -> q, k, v each (B, H, T, d); q/k normalised then rotated."""
        b, t, _ = x.shape
        qkv = self.qkv(x).view(b, t, self.num_heads, -1, 3)  # (B, T, H, d, 3), j = q/k/v fastest
        # one copy into (3, B, H, T, d): q, k and v each contiguous with a unit-stride last
        # dim, which the fused SDPA kernels require (a strided v sends SDPA to the math path)
        qkv = qkv.permute(4, 0, 2, 1, 3).contiguous()
        q, k, v = qkv.unbind(0)
        # weight cast to the activation dtype: under bf16 autocast this is the reference's
        # bf16 numerics (eps = bf16 machine epsilon) and keeps torch's fused kernel
        q = F.rms_norm(q, q.shape[-1:], self.q_norm.weight.to(q.dtype), self.q_norm.eps)
        k = F.rms_norm(k, k.shape[-1:], self.k_norm.weight.to(k.dtype), self.k_norm.eps)
        if rot is not None:
            q = apply_rope(q, rot)
            k = apply_rope(k, rot)
        return q, k, v


class SingleBlock(nn.Module):
    """One stream's transformer block (MMAudio's MMDitSingleBlock).

    kernel_size 3 uses channel-last convs for linear1/ffn; 1 uses Linear / MLP. A pre-only
    block only contributes q/k/v (its own update is discarded).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        *,
        pre_only: bool = False,
        kernel_size: int = 3,
        padding: int = 1,
    ) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.attn = SelfAttention(dim, num_heads)
        if pre_only:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
            return
        hidden = int(dim * mlp_ratio)
        if kernel_size == 1:
            self.linear1 = nn.Linear(dim, dim)
            self.ffn: nn.Module = MLP(dim, hidden)
        else:
            self.linear1 = ChannelLastConv1d(dim, dim, kernel_size, padding=padding)
            self.ffn = ConvMLP(dim, hidden, kernel_size=kernel_size, padding=padding)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim, bias=True))

    def pre_attention(
        self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None
    ) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
        """x (B, T, D), c (B, 1|T, D) -> (q, k, v), post-attention modulation terms."""
        mod = self.adaLN_modulation(c)
        if self.pre_only:
            shift_msa, scale_msa = mod.chunk(2, dim=-1)
            rest: tuple[torch.Tensor, ...] = ()
        else:
            shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
            rest = (gate_msa, shift_mlp, scale_mlp, gate_mlp)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        return self.attn.pre_attention(h, rot), rest

    def post_attention(
        self, x: torch.Tensor, attn_out: torch.Tensor, rest: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Residual updates after attention; a pre-only block returns x unchanged."""
        if self.pre_only:
            return x
        gate_msa, shift_mlp, scale_mlp, gate_mlp = rest
        x = x + self.linear1(attn_out) * gate_msa
        h = modulate(self.norm2(x), shift_mlp, scale_mlp)
        return x + self.ffn(h) * gate_mlp

    def forward(self, x: torch.Tensor, c: torch.Tensor, rot: torch.Tensor | None) -> torch.Tensor:
        """Stand-alone block (fused stage): attention over its own tokens only."""
        (q, k, v), rest = self.pre_attention(x, c, rot)
        return self.post_attention(x, attention(q, k, v), rest)


class JointBlock(nn.Module):
    """Three streams (latent, clip, text) sharing one attention over [latent, clip, text]."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, *, pre_only: bool) -> None:
        super().__init__()
        self.pre_only = pre_only
        self.latent_block = SingleBlock(dim, num_heads, mlp_ratio, pre_only=False, kernel_size=3, padding=1)
        self.clip_block = SingleBlock(dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=3, padding=1)
        self.text_block = SingleBlock(dim, num_heads, mlp_ratio, pre_only=pre_only, kernel_size=1, padding=0)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        text_f: torch.Tensor,
        global_c: torch.Tensor,
        extended_c: torch.Tensor,
        latent_rot: torch.Tensor,
        clip_rot: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """latent (B, N, D), clip_f (B, Nc, D), text_f (B, Nt, D) -> updated streams."""
        x_qkv, x_rest = self.latent_block.pre_attention(latent, extended_c, latent_rot)
        c_qkv, c_rest = self.clip_block.pre_attention(clip_f, global_c, clip_rot)
        t_qkv, t_rest = self.text_block.pre_attention(text_f, global_c, None)
        n, nc = latent.shape[1], clip_f.shape[1]
        k, v = (torch.cat([x_qkv[i], c_qkv[i], t_qkv[i]], dim=2) for i in (1, 2))
        if self.pre_only:
            # the clip/text updates of a pre-only block are discarded: only the latent
            # queries attend (the latent rows are the same as in the full attention)
            return self.latent_block.post_attention(latent, attention(x_qkv[0], k, v), x_rest), clip_f, text_f
        q = torch.cat([x_qkv[0], c_qkv[0], t_qkv[0]], dim=2)
        out = attention(q, k, v)  # (B, N + Nc + Nt, D)
        x_out, c_out, t_out = out[:, :n], out[:, n : n + nc], out[:, n + nc :]
        latent = self.latent_block.post_attention(latent, x_out, x_rest)
        clip_f = self.clip_block.post_attention(clip_f, c_out, c_rest)
        text_f = self.text_block.post_attention(text_f, t_out, t_rest)
        return latent, clip_f, text_f


class FinalBlock(nn.Module):
    """adaLN (shift, scale) -> LayerNorm -> channel-last conv k7 to the latent width."""

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim, bias=True))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-5)
        self.conv = ChannelLastConv1d(dim, out_dim, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.conv(modulate(self.norm(x), shift, scale))

