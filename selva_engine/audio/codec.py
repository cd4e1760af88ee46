"""Audio codec: waveform <-> VAE latents for one variant (mel + VAE + vocoder together).

`encode` turns waveforms at the mode's rate into the posterior of the audio VAE, channel-last
(B, N, L) as the generator and the feature cache want it; `decode` goes latent -> log-mel ->
waveform with the mode's vocoder. All of it runs in float32 whatever the training dtype
(torch.stft needs fp32 and the reference VAE computes in fp32). Example:

    w = weights.resolve(selva_dir, "small_16k")
    codec = load_audio_codec(get_variant("small_16k"), w, "cuda")
    mean, std = codec.encode(wave)          # (B, 250, 20) each for 128000-sample clips
    audio = codec.decode(mean)              # (B, 128000)
"""

from __future__ import annotations

import gc
import hashlib
from pathlib import Path
from typing import Protocol

import torch

from selva_engine.audio.bigvgan import BigVGAN
from selva_engine.audio.mel import MelConverter
from selva_engine.audio.vae import VAE, load_vae
from selva_engine.audio.vocoder import load_vocoder
from selva_engine.io import file_fingerprint
from selva_engine.model.variants import Variant

__all__ = ["AudioCodec", "CodecFiles", "load_audio_codec"]


class CodecFiles(Protocol):
    """Where a variant's audio weights are: what `load_audio_codec` reads of a
    `selva_engine.weights.locate` VariantWeights (the audio package never imports weights)."""

    vae: Path  # v1-16.pth / v1-44.pth
    vocoder: Path  # best_netG.pt (bigvgan_v1) or a BigVGAN-v2 directory (bigvgan_v2)
    vocoder_kind: str  # "bigvgan_v1" | "bigvgan_v2"


class AudioCodec:
    """Mel converter + audio VAE (+ vocoder) of one variant on one device.

    `identity` is a stable hex key for caches of encoded latents: it covers the VAE file's
    content fingerprint and every mel parameter of the mode, nothing about the device.
    """

    def __init__(
        self,
        variant: Variant,
        mel: MelConverter,
        vae: VAE,
        vocoder: BigVGAN | None,
        *,
        identity: str,
        device: torch.device,
    ) -> None:
        self.variant = variant
        self.mode = variant.audio
        self.mel: MelConverter | None = mel.to(device)
        self.vae: VAE | None = vae.to(device)
        self.vocoder: BigVGAN | None = vocoder.to(device) if vocoder is not None else None
        self.identity = identity
        self.device = device

    @property
    def sampling_rate(self) -> int:
        """Waveform rate in Hz (16000 or 44100)."""
        return self.mode.sampling_rate

    @property
    def samples_per_latent(self) -> int:
        """Waveform samples per latent frame (hop * 2)."""
        return self.mode.hop * 2

    def _need(self, part: str) -> torch.nn.Module:
        mod = getattr(self, part)
        if mod is None:
            raise RuntimeError(f"audio codec has no {part} (freed, or loaded without it)")
        return mod

    @torch.no_grad()
    def encode_mel(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, std) of log-mels (B, M, T), each channel-last (B, T // 2, L) fp32."""
        vae = self._need("vae")
        if not hasattr(vae, "encoder"):
            raise RuntimeError("audio codec was loaded without the VAE encoder")
        mean, _logvar, std = vae.encode(mel.to(self.device, torch.float32))
        return mean.transpose(1, 2).contiguous(), std.transpose(1, 2).contiguous()

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, std) of waveforms (B, T) in [-1, 1] at the mode's rate.

        Each result is (B, N, L) float32 on the codec's device with N = mel frames // 2
        (128000 samples @16k -> 250; 353280 @44.1k -> 345). Unnormalised VAE latent space.
        """
        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        mel = self._need("mel")(wave.to(self.device, torch.float32))  # (B, M, T // hop)
        return self.encode_mel(mel)

    @torch.no_grad()
    def decode_mel(self, latent: torch.Tensor) -> torch.Tensor:
        """Log-mel (B, M, 2N) from a channel-last latent (B, N, L), fp32."""
        z = latent.to(self.device, torch.float32).transpose(1, 2)  # (B, L, N) for the VAE
        return self._need("vae").decode(z)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Waveform (B, 2N * hop) in [-1, 1] from a latent (B, N, L): VAE decode, then vocoder."""
        wave = self._need("vocoder")(self.decode_mel(latent))  # (B, 1, samples)
        return wave.squeeze(1)

    def to(self, device: torch.device | str) -> AudioCodec:
        """Move every part to `device` (in place); returns self."""
        self.device = torch.device(device)
        for part in ("mel", "vae", "vocoder"):
            mod = getattr(self, part)
            if mod is not None:
                setattr(self, part, mod.to(self.device))
        return self

    def free(self) -> None:
        """Drop all weights (and the CUDA cache on a GPU); the codec is unusable afterwards."""
        on_cuda = self.device.type == "cuda"
        self.mel = self.vae = self.vocoder = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()


def codec_identity(variant: Variant, weights: CodecFiles) -> str:
    """Cache key of a variant's encoder: VAE file fingerprint + VAE dims + mel parameters."""
    m = variant.audio
    h = hashlib.sha256(file_fingerprint(weights.vae).encode())
    h.update(repr((variant.vae_dims, m.sampling_rate, m.n_fft, m.hop, m.win_length, m.n_mels,
                   m.f_min, m.f_max, m.log_base)).encode())
    return h.hexdigest()[:32]


def load_audio_codec(
    variant: Variant,
    weights: CodecFiles,
    device: torch.device | str = "cpu",
    *,
    need_encoder: bool = True,
    need_vocoder: bool = True,
) -> AudioCodec:
    """Load the mel converter, VAE and (optionally) vocoder of `variant` from `weights`.

    `weights` comes from `selva_engine.weights.locate.resolve`. Without `need_encoder` the VAE
    encoder is dropped after loading (decode-only); without `need_vocoder` no vocoder is
    loaded (encode-only, e.g. feature extraction). Raises the loaders' errors (VaeLoadError,
    VocoderLoadError, UnsafeFileError, FileNotFoundError) unchanged.
    """
    device = torch.device(device)
    m, e, d = variant.vae_dims
    vae = load_vae(weights.vae, data_dim=m, embed_dim=e, hidden_dim=d, need_encoder=need_encoder)
    vocoder = load_vocoder(weights.vocoder_kind, weights.vocoder) if need_vocoder else None
    mel = MelConverter.from_mode(variant.audio)
    return AudioCodec(variant, mel, vae, vocoder, identity=codec_identity(variant, weights),
                      device=device)
