"""BigVGAN generator (v1 for 16 kHz, v2 for 44.1 kHz): log-mel (B, M, T) -> waveform (B, 1, T*hop).

Why our own module instead of the PyPI `bigvgan` package (2.4.1): that wheel requires `pesq`
(published only as an sdist that compiles C code at install time), librosa + numba,
tensorboard, nnaudio and auraloss, and `import bigvgan` imports librosa and huggingface_hub
at package import. None of that is needed to run the network, which is ~150 lines of plain
convolutions. This module reproduces the reference's module tree, so a checkpoint loads by
name after its weight norm is folded (`fold_weight_norm`); the `bigvgan_tiny` (v1) and
`bigvgan_v2_tiny` (v2: clamp, no final bias) goldens pin the numerics and
`manifests/bigvgan_v1_16k.json` pins the key set.

The network holds plain (already folded) conv weights: weight norm only matters for training.
Both checkpoint spellings of weight norm are accepted: legacy `<m>.weight_g` / `<m>.weight_v`
and parametrised `<m>.parametrizations.weight.original0` / `.original1`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BigVGAN",
    "checkpoint_shapes",
    "fold_weight_norm",
    "kaiser_sinc_filter",
    "split_weight_norm",
]

_G_SUFFIXES = (".weight_g", ".parametrizations.weight.original0")
_V_SUFFIXES = (".weight_v", ".parametrizations.weight.original1")


def kaiser_sinc_filter(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass (1, 1, kernel_size), normalised to sum 1.

    `cutoff` and `half_width` are in cycles per sample (0.5 = Nyquist). The Kaiser beta follows
    the usual attenuation formula for a transition band of 4 * half_width.
    """
    half = kernel_size // 2
    atten = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21.0) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, periodic=False, beta=beta)
    if kernel_size % 2 == 0:
        t = torch.arange(-half, half) + 0.5  # taps at +-0.5 ... +-(half - 0.5)
    else:
        t = torch.arange(kernel_size) - half
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    return (filt / filt.sum()).view(1, 1, kernel_size)


class _UpFilter(nn.Module):
    """x2 anti-aliased upsampling: replicate pad, strided transposed low-pass, crop."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio, self.kernel_size = ratio, kernel_size
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r, k, c = self.ratio, self.kernel_size, x.shape[1]
        pad = k // r - 1
        crop_l = pad * r + (k - r) // 2
        crop_r = pad * r + (k - r + 1) // 2
        x = F.pad(x, (pad, pad), mode="replicate")
        x = r * F.conv_transpose1d(x, self.filter.expand(c, -1, -1), stride=r, groups=c)
        return x[..., crop_l:-crop_r]


class _LowPass(nn.Module):
    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.ratio, self.kernel_size = ratio, kernel_size
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, c = self.kernel_size, x.shape[1]
        left = k // 2 - (1 if k % 2 == 0 else 0)
        x = F.pad(x, (left, k // 2), mode="replicate")
        return F.conv1d(x, self.filter.expand(c, -1, -1), stride=self.ratio, groups=c)


class _DownFilter(nn.Module):
    """x2 anti-aliased downsampling (replicate pad, low-pass, stride 2); key `lowpass.filter`."""

    def __init__(self, ratio: int = 2, kernel_size: int = 12) -> None:
        super().__init__()
        self.lowpass = _LowPass(ratio, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class Snake(nn.Module):
    """Snake / SnakeBeta: x + sin^2(a x) / (b + 1e-9), per channel; a, b stored as logs if logscale."""

    def __init__(self, channels: int, beta: bool, logscale: bool) -> None:
        super().__init__()
        init = torch.zeros if logscale else torch.ones
        self.logscale = logscale
        self.alpha = nn.Parameter(init(channels))
        if beta:
            self.beta = nn.Parameter(init(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.view(1, -1, 1)
        b = self.beta.view(1, -1, 1) if hasattr(self, "beta") else a
        if self.logscale:
            a, b = torch.exp(a), torch.exp(b)
        return x + torch.sin(x * a).pow(2) / (b + 1e-9)


class AliasFreeAct(nn.Module):
    """Upsample x2 -> Snake(Beta) -> downsample x2 (keys act.*, upsample.*, downsample.*)."""

    def __init__(self, channels: int, activation: str, logscale: bool) -> None:
        super().__init__()
        if activation not in ("snake", "snakebeta"):
            raise ValueError(f"unknown BigVGAN activation {activation!r} (snake, snakebeta)")
        self.act = Snake(channels, beta=activation == "snakebeta", logscale=logscale)
        self.upsample = _UpFilter()
        self.downsample = _DownFilter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


def _same(kernel: int, dilation: int = 1) -> int:
    return dilation * (kernel - 1) // 2


class AMPBlock1(nn.Module):
    """Resblock "1": per dilation d, x += conv_1(act(conv_d(act(x))))."""

    def __init__(self, ch: int, k: int, dilations: Sequence[int], activation: str, log: bool):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(ch, ch, k, dilation=d, padding=_same(k, d)) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(ch, ch, k, padding=_same(k)) for _ in dilations)
        self.activations = nn.ModuleList(
            AliasFreeAct(ch, activation, log) for _ in range(2 * len(dilations))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        acts = self.activations
        for i, (c1, c2) in enumerate(zip(self.convs1, self.convs2, strict=True)):
            x = x + c2(acts[2 * i + 1](c1(acts[2 * i](x))))
        return x


class AMPBlock2(nn.Module):
    """Resblock "2": per dilation d, x += conv_d(act(x))."""

    def __init__(self, ch: int, k: int, dilations: Sequence[int], activation: str, log: bool):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(ch, ch, k, dilation=d, padding=_same(k, d)) for d in dilations)
        self.activations = nn.ModuleList(AliasFreeAct(ch, activation, log) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.convs, self.activations, strict=True):
            x = x + conv(act(x))
        return x


class BigVGAN(nn.Module):
    """BigVGAN generator built from the reference hyper-parameters (the yml / config.json keys).

    Stage i upsamples by `upsample_rates[i]` with a transposed conv and halves the channels,
    then averages `len(resblock_kernel_sizes)` AMP blocks. v1 ends in conv_post (with bias)
    and tanh; v2-44k sets `use_tanh_at_final=False` (clamp to [-1, 1]) and
    `use_bias_at_final=False`. Output (B, 1, T * prod(upsample_rates)), float32.
    """

    def __init__(
        self,
        *,
        num_mels: int,
        upsample_rates: Sequence[int],
        upsample_kernel_sizes: Sequence[int],
        upsample_initial_channel: int,
        resblock_kernel_sizes: Sequence[int],
        resblock_dilation_sizes: Sequence[Sequence[int]],
        resblock: str = "1",
        activation: str = "snakebeta",
        snake_logscale: bool = True,
        use_tanh_at_final: bool = True,
        use_bias_at_final: bool = True,
    ) -> None:
        super().__init__()
        block = {"1": AMPBlock1, "2": AMPBlock2}.get(str(resblock))
        if block is None:
            raise ValueError(f"unknown BigVGAN resblock type {resblock!r} (expected '1' or '2')")
        self.num_kernels = len(resblock_kernel_sizes)
        self.hop = int(math.prod(upsample_rates))
        self.use_tanh_at_final = use_tanh_at_final
        ch0 = upsample_initial_channel
        self.conv_pre = nn.Conv1d(num_mels, ch0, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (u, k) in enumerate(zip(upsample_rates, upsample_kernel_sizes, strict=True)):
            c_in, c_out = ch0 // 2**i, ch0 // 2 ** (i + 1)
            self.ups.append(nn.ModuleList([nn.ConvTranspose1d(c_in, c_out, k, u, padding=(k - u) // 2)]))
            for rk, rd in zip(resblock_kernel_sizes, resblock_dilation_sizes, strict=True):
                self.resblocks.append(block(c_out, rk, rd, activation, snake_logscale))
        ch = ch0 // 2 ** len(upsample_rates)
        self.activation_post = AliasFreeAct(ch, activation, snake_logscale)
        self.conv_post = nn.Conv1d(ch, 1, 7, padding=3, bias=use_bias_at_final)

    @classmethod
    def from_config(cls, cfg: dict) -> BigVGAN:
        """Build from a hyper-parameter dict (yml / config.json); unrelated keys are ignored."""
        keys = (
            "num_mels", "upsample_rates", "upsample_kernel_sizes", "upsample_initial_channel",
            "resblock_kernel_sizes", "resblock_dilation_sizes", "resblock", "activation",
            "snake_logscale", "use_tanh_at_final", "use_bias_at_final",
        )  # fmt: skip
        return cls(**{k: cfg[k] for k in keys if k in cfg})

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Waveform (B, 1, T * hop) in [-1, 1] from a log-mel (B, num_mels, T)."""
        x = self.conv_pre(mel.float())
        nk = self.num_kernels
        for i, up in enumerate(self.ups):
            x = up[0](x)
            acc = self.resblocks[i * nk](x)
            for j in range(1, nk):
                acc = acc + self.resblocks[i * nk + j](x)
            x = acc / nk
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.use_tanh_at_final else x.clamp(-1.0, 1.0)


def _conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.ConvTranspose1d)]


def fold_weight_norm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every (g, v) weight-norm pair by `<m>.weight = g * v / ||v||` (norm over dims >= 1).

    Accepts legacy (`weight_g`/`weight_v`) and parametrised (`parametrizations.weight.original0/1`)
    spellings; other keys pass through unchanged. Computed in float32. Raises KeyError when a
    g has no matching v.
    """
    out: dict[str, torch.Tensor] = {}
    for key, val in sd.items():
        if key.endswith(_V_SUFFIXES):
            continue
        g_suffix = next((s for s in _G_SUFFIXES if key.endswith(s)), None)
        if g_suffix is None:
            out[key] = val
            continue
        prefix = key[: -len(g_suffix)]
        v_key = prefix + _V_SUFFIXES[_G_SUFFIXES.index(g_suffix)]
        if v_key not in sd:
            raise KeyError(f"weight-norm magnitude {key} has no direction {v_key}")
        v = sd[v_key].float()
        norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
        out[prefix + ".weight"] = val.float() * v / norm
    return out


def split_weight_norm(
    model: nn.Module, *, legacy: bool = False
) -> dict[str, torch.Tensor]:
    """State dict of `model` in checkpoint form: each conv weight w as g = ||w||, v = w.

    `legacy=True` spells them `weight_g`/`weight_v` (old torch / PyPI bigvgan), otherwise
    `parametrizations.weight.original0/1` (the reference module). Inverse of `fold_weight_norm`.
    """
    convs = set(_conv_names(model))
    g_name, v_name = (_G_SUFFIXES[0], _V_SUFFIXES[0]) if legacy else (_G_SUFFIXES[1], _V_SUFFIXES[1])
    out: dict[str, torch.Tensor] = {}
    for key, val in model.state_dict().items():
        prefix = key.removesuffix(".weight")
        if key.endswith(".weight") and prefix in convs:
            dims = tuple(range(1, val.dim()))
            out[prefix + g_name] = torch.linalg.vector_norm(val, dim=dims, keepdim=True)
            out[prefix + v_name] = val.clone()
        else:
            out[key] = val.clone()
    return out


def checkpoint_shapes(model: nn.Module, *, legacy: bool = False) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a weight-normed checkpoint for `model` (works on the meta device)."""
    convs = set(_conv_names(model))
    g_name, v_name = (_G_SUFFIXES[0], _V_SUFFIXES[0]) if legacy else (_G_SUFFIXES[1], _V_SUFFIXES[1])
    out: dict[str, tuple[int, ...]] = {}
    for key, val in model.state_dict().items():
        prefix = key.removesuffix(".weight")
        if key.endswith(".weight") and prefix in convs:
            out[prefix + g_name] = (val.shape[0],) + (1,) * (val.dim() - 1)
            out[prefix + v_name] = tuple(val.shape)
        else:
            out[key] = tuple(val.shape)
    return out
