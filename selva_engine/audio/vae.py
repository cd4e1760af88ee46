"""MMAudio audio VAE (v1-16.pth / v1-44.pth): 1-D EDM2-style magnitude-preserving conv net.

Weight-compatible with the published files: the module tree reproduces their state-dict keys
and shapes exactly (`tests/engine/test_vae.py` checks them against the golden manifests).
The files store *raw* convolution weights; `force_weight_norm()` must be applied once after
loading (`load_vae` does it), after which every convolution is a plain bias-free conv.
Always run in float32: the pixel norm is computed in fp32 and the reference refuses anything
else. Layout is channel-first (B, C, T) throughout; the generator is channel-last.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selva_engine.io import safe_torch_load

__all__ = ["VAE", "VaeLoadError", "force_weight_norm_", "load_vae", "pixel_norm"]

_EPS = 1e-4
_CLAMP = 256.0  # activation clamp after every res block and the middle stage
_RES_BALANCE = 0.3  # mp_sum weight of the residual branch
_CH_MULT = (1, 2, 4)


def pixel_norm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Scale `x` to unit RMS along `dim`: x / (1e-4 + ||x|| / sqrt(n)), norm computed in fp32."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = _EPS + norm / math.sqrt(x.shape[dim])
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    """Magnitude-preserving SiLU: silu(x) / 0.596 (unit-variance output for unit-variance input)."""
    return F.silu(x) / 0.596


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = _RES_BALANCE) -> torch.Tensor:
    """Magnitude-preserving blend ((1 - t) a + t b) / sqrt((1 - t)^2 + t^2)."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t**2)


class MPConv1d(nn.Module):
    """Bias-free Conv1d with "same" padding k // 2; weight (out, in, k) stored raw in the file.

    After `force_weight_norm_` the weight is used as-is, multiplied by an optional gain.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel))

    def forward(self, x: torch.Tensor, gain: torch.Tensor | float = 1.0) -> torch.Tensor:
        w = self.weight * gain if not (isinstance(gain, float) and gain == 1.0) else self.weight
        return F.conv1d(x, w.to(x.dtype), padding=w.shape[-1] // 2)


class ResBlock(nn.Module):
    """Pixel-norm the input, two k3 convs with mp_silu, mp_sum with the (1x1-projected) input."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(in_ch, out_ch, 3)
        self.conv2 = MPConv1d(out_ch, out_ch, 3)
        if in_ch != out_ch:
            self.nin_shortcut = MPConv1d(in_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pixel_norm(x)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return mp_sum(x, h)


class AttnBlock(nn.Module):
    """Single-head self-attention over time; qkv channels interleaved as (C, 3), q/k/v fastest."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.qkv = MPConv1d(ch, 3 * ch, 1)
        self.proj_out = MPConv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        qkv = pixel_norm(self.qkv(x).reshape(b, c, 3, t), dim=1)  # unit RMS over C per slot
        q, k, v = qkv.unbind(2)  # each (B, C, T)
        w = torch.einsum("bcq,bck->bqk", q, k / math.sqrt(c)).softmax(dim=-1)  # (B, Tq, Tk)
        y = torch.einsum("bqk,bck->bcq", w, v)
        return mp_sum(x, self.proj_out(y))


class Downsample(nn.Module):
    """1x1 conv, average pool by 2 (odd frame counts floor), 1x1 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = MPConv1d(ch, ch, 1)
        self.conv2 = MPConv1d(ch, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample(nn.Module):
    """Repeat every frame twice, then a k3 conv."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = MPConv1d(ch, ch, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.repeat_interleave(2, dim=-1))


class _Level(nn.Module):
    """One resolution level: `block` list plus an optional `downsample` / `upsample`."""

    def __init__(self, chans: list[tuple[int, int]]) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResBlock(i, o) for i, o in chans)


class _Mid(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.block_1 = ResBlock(ch, ch)
        self.attn_1 = AttnBlock(ch)
        self.block_2 = ResBlock(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_2(self.attn_1(self.block_1(x)))
        return x.clamp(-_CLAMP, _CLAMP)


class Encoder(nn.Module):
    """Normalised mel (B, M, T) -> moments (B, 2E, T // 2)."""

    def __init__(self, data_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        d = hidden_dim
        self.learnable_gain = nn.Parameter(torch.zeros([]))
        self.conv_in = MPConv1d(data_dim, d, 3)
        levels = []
        in_mult = (1, *_CH_MULT)
        for i, mult in enumerate(_CH_MULT):
            c_in, c_out = d * in_mult[i], d * mult
            level = _Level([(c_in, c_out), (c_out, c_out)])
            if i == 0:  # the only temporal downsample (x2)
                level.downsample = Downsample(c_out)
            levels.append(level)
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(4 * d)
        self.conv_out = MPConv1d(4 * d, 2 * embed_dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h).clamp(-_CLAMP, _CLAMP)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class Decoder(nn.Module):
    """Latent (B, E, T') -> normalised mel (B, M, 2 T')."""

    def __init__(self, data_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        d = hidden_dim
        self.learnable_gain = nn.Parameter(torch.zeros([]))
        self.conv_in = MPConv1d(embed_dim, 4 * d, 3)
        self.mid = _Mid(4 * d)
        # up[i] works at level i (0 = full resolution); it is *run* from level 2 down to 0.
        levels = []
        for i, mult in enumerate(_CH_MULT):
            c_in = d * (_CH_MULT[i + 1] if i + 1 < len(_CH_MULT) else _CH_MULT[-1])
            c_out = d * mult
            level = _Level([(c_in, c_out), (c_out, c_out), (c_out, c_out)])
            if i == 1:  # the only temporal upsample (x2), after level 1's blocks
                level.upsample = Upsample(c_out)
            levels.append(level)
        self.up = nn.ModuleList(levels)
        self.conv_out = MPConv1d(d, data_dim, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h).clamp(-_CLAMP, _CLAMP)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class VAE(nn.Module):
    """The audio VAE: `encode(mel)` -> posterior (mean, logvar, std); `decode(z)` -> mel.

    `data_dim` = mel bins M (80 or 128), `embed_dim` = latent channels E, `hidden_dim` = base
    width d (channels d, 2d, 4d). `data_mean` / `data_std` (1, M, 1) are the per-bin mel
    statistics stored in the checkpoint.
    """

    def __init__(self, *, data_dim: int, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.data_dim, self.embed_dim, self.hidden_dim = data_dim, embed_dim, hidden_dim
        self.register_buffer("data_mean", torch.zeros(1, data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, data_dim, 1))
        self.encoder = Encoder(data_dim, embed_dim, hidden_dim)
        self.decoder = Decoder(data_dim, embed_dim, hidden_dim)

    def encode_moments(self, mel: torch.Tensor) -> torch.Tensor:
        """Raw encoder output (B, 2E, T // 2) for a log-mel (B, M, T) (normalised inside)."""
        x = (mel.float() - self.data_mean) / self.data_std
        return self.encoder(x)

    def encode(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Posterior of a log-mel (B, M, T): (mean, logvar clamped to [-30, 20], std), each (B, E, T // 2)."""
        moments = self.encode_moments(mel)
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        return mean, logvar, torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor, *, unnormalize: bool = True) -> torch.Tensor:
        """Log-mel (B, M, 2 T') from a latent (B, E, T'); `unnormalize=False` skips data stats."""
        y = self.decoder(z.float())
        return y * self.data_std + self.data_mean if unnormalize else y

    def drop_encoder(self) -> None:
        """Free the encoder (decode-only use)."""
        del self.encoder


@torch.no_grad()
def force_weight_norm_(module: nn.Module) -> nn.Module:
    """Normalise every MPConv1d weight in place, once, as the reference loader does.

    Each output filter w_o (fan_in = in * k values) becomes
    w_o / (1e-4 + ||w_o|| / sqrt(fan_in)) / sqrt(fan_in), computed in fp32. Returns `module`.
    """
    for m in module.modules():
        if isinstance(m, MPConv1d):
            w = m.weight.data.float()
            fan_in = w[0].numel()
            w = pixel_norm(w.flatten(1), dim=1).reshape(w.shape) / math.sqrt(fan_in)
            m.weight.data.copy_(w.to(m.weight.dtype))
    return module


class VaeLoadError(ValueError):
    """A VAE file does not fit the expected architecture (wrong mode, wrong sizes, bad keys)."""


def load_vae(
    path: Path | str,
    *,
    data_dim: int,
    embed_dim: int,
    hidden_dim: int,
    need_encoder: bool = True,
    device: torch.device | str = "cpu",
) -> VAE:
    """Load a raw `v1-16.pth` / `v1-44.pth` (flat state dict, strict) and force weight norm.

    The file is read with `weights_only=True`; a key or shape mismatch raises VaeLoadError
    naming the first few differences (typically the file of the other mode). Returns the VAE
    in eval mode, float32, on `device`, with frozen parameters and, unless `need_encoder`,
    without its encoder.
    """
    sd = safe_torch_load(path, what="audio VAE checkpoint")
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise VaeLoadError(f"{path}: not a flat state dict of tensors")
    vae = VAE(data_dim=data_dim, embed_dim=embed_dim, hidden_dim=hidden_dim)
    expected = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in sd.items()}
    problems = [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    problems += [
        f"{k}: shape {got[k]} != expected {expected[k]}"
        for k in expected
        if k in got and got[k] != expected[k]
    ]
    if problems:
        raise VaeLoadError(
            f"{path}: does not match the VAE (data_dim={data_dim}, embed_dim={embed_dim}, "
            f"hidden_dim={hidden_dim}); {len(problems)} problem(s): {'; '.join(problems[:5])} "
            "(is it the file of the other mode or another variant?)"
        )
    vae.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    force_weight_norm_(vae)
    if not need_encoder:
        vae.drop_encoder()
    vae.requires_grad_(False)
    return vae.eval().to(device)
