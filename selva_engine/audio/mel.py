"""Log-mel converter of the MMAudio audio VAE (16 kHz and 44.1 kHz modes).

The VAE was trained on mels made with librosa's Slaney filterbank (Slaney mel scale, Slaney
area normalisation), so that filterbank is rebuilt here in numpy (no librosa dependency) and
checked against the `mel_16k` / `mel_44k` goldens. ComfyUI-SelVA's HTK filterbank is a known
deviation and is deliberately not reproduced. Everything runs in float32: `torch.stft`
rejects bf16 and the reference computes in fp32 as well.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from selva_engine.model.variants import AudioMode

__all__ = ["MelConverter", "hz_to_mel_slaney", "mel_to_hz_slaney", "slaney_mel_filterbank"]

# Slaney mel scale: linear (3 mels per 200 Hz) below 1 kHz, logarithmic above.
_F_SP = 200.0 / 3.0
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP  # 15 mels
_LOG_STEP = math.log(6.4) / 27.0


def hz_to_mel_slaney(hz: np.ndarray | float) -> np.ndarray:
    """Frequencies in Hz -> Slaney mels (float64 array of the same shape)."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / _F_SP
    high = hz >= _MIN_LOG_HZ
    safe = np.where(high, hz, _MIN_LOG_HZ)  # keeps log() finite in the masked-out branch
    return np.where(high, _MIN_LOG_MEL + np.log(safe / _MIN_LOG_HZ) / _LOG_STEP, mel)


def mel_to_hz_slaney(mel: np.ndarray | float) -> np.ndarray:
    """Slaney mels -> frequencies in Hz (inverse of `hz_to_mel_slaney`), float64."""
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * _F_SP
    return np.where(mel >= _MIN_LOG_MEL, _MIN_LOG_HZ * np.exp(_LOG_STEP * (mel - _MIN_LOG_MEL)), hz)


def slaney_mel_filterbank(
    sr: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None,
    dtype: type = np.float32,
) -> np.ndarray:
    """Triangular mel filterbank equal to librosa's `filters.mel` defaults, (n_mels, n_fft//2+1).

    Band edges are `n_mels + 2` points evenly spaced on the Slaney mel scale between fmin and
    fmax (Hz; None = sr/2); each triangle is scaled by 2 / (its width in Hz) so every band has
    the same area (Slaney normalisation). Computed in float64, returned as `dtype`.
    """
    if fmax is None:
        fmax = sr / 2.0
    bins = np.fft.rfftfreq(n_fft, d=1.0 / sr)  # (F,) Hz of each STFT bin
    edges_mel = np.linspace(hz_to_mel_slaney(fmin), hz_to_mel_slaney(fmax), n_mels + 2)
    edges = mel_to_hz_slaney(edges_mel)  # (n_mels + 2,) Hz
    widths = np.diff(edges)  # (n_mels + 1,)
    dist = edges[:, None] - bins[None, :]  # (n_mels + 2, F)
    rising = -dist[:-2] / widths[:-1, None]
    falling = dist[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, F)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.astype(dtype)


class MelConverter(nn.Module):
    """Waveform (B, T) in [-1, 1] -> log-mel (B, n_mels, T // hop), always in float32.

    Pipeline: clamp to [-1, 1]; reflect-pad (n_fft - hop) / 2 each side; STFT without
    centring with a periodic Hann window; magnitude sqrt(re^2 + im^2 + 1e-9); Slaney mel
    filterbank; log (base `log_base`) of max(mel, 1e-5). The filterbank and window are
    non-persistent buffers (they never appear in a state dict).
    """

    def __init__(
        self,
        *,
        sampling_rate: int,
        n_fft: int,
        hop: int,
        win_length: int,
        n_mels: int,
        f_min: float = 0.0,
        f_max: float | None = None,
        log_base: float = 10.0,
        mag_eps: float = 1e-9,
        clamp_min: float = 1e-5,
        pad: int | None = None,
    ) -> None:
        super().__init__()
        if pad is None and (n_fft - hop) % 2:
            raise ValueError(f"n_fft - hop must be even for symmetric padding (got {n_fft}, {hop})")
        self._pad = (n_fft - hop) // 2 if pad is None else int(pad)
        self.sampling_rate = sampling_rate
        self.n_fft = n_fft
        self.hop = hop
        self.win_length = win_length
        self.n_mels = n_mels
        self.log_base = float(log_base)
        self.mag_eps = mag_eps
        self.clamp_min = clamp_min
        basis = slaney_mel_filterbank(sampling_rate, n_fft, n_mels, f_min, f_max)
        self.register_buffer("mel_basis", torch.from_numpy(basis), persistent=False)
        window = torch.hann_window(win_length, periodic=True, dtype=torch.float32)
        self.register_buffer("window", window, persistent=False)

    @classmethod
    def from_mode(cls, mode: AudioMode) -> MelConverter:
        """Converter with the parameters of an audio mode (`variants.MODES[...]`)."""
        return cls(
            sampling_rate=mode.sampling_rate,
            n_fft=mode.n_fft,
            hop=mode.hop,
            win_length=mode.win_length,
            n_mels=mode.n_mels,
            f_min=mode.f_min,
            f_max=mode.f_max,
            log_base=mode.log_base,
        )

    @property
    def pad(self) -> int:
        """Reflect padding in samples on each side ((n_fft - hop) / 2 unless overridden)."""
        return self._pad

    def num_frames(self, num_samples: int) -> int:
        """Mel frames produced for a waveform of `num_samples` samples."""
        return 1 + (num_samples + 2 * self.pad - self.n_fft) // self.hop

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel of `waveform` (B, T) or (T,); returns (B, n_mels, frames) float32."""
        squeeze = waveform.dim() == 1
        x = waveform.reshape(1, -1) if squeeze else waveform
        x = x.to(torch.float32).clamp(-1.0, 1.0)
        x = nn.functional.pad(x.unsqueeze(1), (self.pad, self.pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            x,
            self.n_fft,
            hop_length=self.hop,
            win_length=self.win_length,
            window=self.window.to(x.device),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # (B, n_fft//2 + 1, frames) complex64
        mag = torch.sqrt(spec.real.pow(2) + spec.imag.pow(2) + self.mag_eps)
        mel = torch.matmul(self.mel_basis.to(x.device), mag)  # (B, n_mels, frames)
        mel = mel.clamp(min=self.clamp_min)
        if self.log_base == 10.0:
            mel = torch.log10(mel)
        elif self.log_base == math.e:
            mel = torch.log(mel)
        else:
            mel = torch.log(mel) / math.log(self.log_base)
        return mel[0] if squeeze else mel
