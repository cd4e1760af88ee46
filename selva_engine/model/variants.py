"""Variant table of the SelVA generator and the sequence configuration of each audio mode.

The four real variants (small_16k, small_44k, medium_44k, large_44k) carry exactly the
constructor hyper-parameters of the published checkpoints; large_44k_v2 is MMAudio's v2
generator (kept so its checkpoint format stays testable). The tiny variants have the same
architecture, with small widths, for CPU tests and the demo; they keep the real feature
widths of the `.npz` files (CLIP 1024, sync 768) and the real sequence lengths, so datasets
made for the real model load unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

__all__ = [
    "MODES",
    "VARIANTS",
    "AudioMode",
    "SequenceConfig",
    "Variant",
    "get_variant",
    "variant_names",
]


@dataclass(frozen=True)
class SequenceConfig:
    """Token counts of every stream for one clip duration (MMAudio's SequenceConfig).

    `duration` is in seconds, `sampling_rate` in Hz, `spectrogram_frame_rate` is the STFT hop
    in samples. All lengths are derived, so changing the duration changes every length.
    """

    duration: float = 8.0
    sampling_rate: int = 16000
    spectrogram_frame_rate: int = 256
    latent_downsample_rate: int = 2
    clip_frame_rate: int = 8
    sync_frame_rate: int = 25
    sync_num_frames_per_segment: int = 16
    sync_step_size: int = 8
    sync_downsample_rate: int = 2

    @property
    def latent_seq_len(self) -> int:
        """Latent frames N = ceil(duration * sr / hop / 2)."""
        return int(
            math.ceil(
                self.duration
                * self.sampling_rate
                / self.spectrogram_frame_rate
                / self.latent_downsample_rate
            )
        )

    @property
    def clip_seq_len(self) -> int:
        """CLIP visual frames at 8 fps; at least one, as the Feature Extractor samples them."""
        return max(1, int(self.duration * self.clip_frame_rate))

    @property
    def sync_seg_len(self) -> int:
        """Number of 16-frame sync windows (stride 8) at 25 fps.

        A clip shorter than one window (0.64 s) still has one: the Feature Extractor pads
        its sync frames to 16 by repeating the last, so its features hold 8 sync tokens.
        """
        num_frames = max(self.duration * self.sync_frame_rate, self.sync_num_frames_per_segment)
        return int((num_frames - self.sync_num_frames_per_segment) // self.sync_step_size + 1)

    @property
    def sync_seq_len(self) -> int:
        """Sync tokens: 8 feature frames per 16-frame segment."""
        return int(
            self.sync_seg_len * self.sync_num_frames_per_segment / self.sync_downsample_rate
        )

    @property
    def num_audio_frames(self) -> int:
        """Exact waveform length in samples that maps onto latent_seq_len latents."""
        return self.latent_seq_len * self.spectrogram_frame_rate * self.latent_downsample_rate

    @property
    def mel_frames(self) -> int:
        """Mel frames of the canonical waveform (2 * N)."""
        return self.latent_seq_len * self.latent_downsample_rate

    def with_duration(self, duration: float) -> SequenceConfig:
        """The same mode at another clip duration (seconds)."""
        return replace(self, duration=float(duration))


@dataclass(frozen=True)
class AudioMode:
    """Everything about one audio mode ("16k" or "44k") outside the generator.

    Mel parameters are MMAudio's; `log_base` is 10 for 16k and e for 44k. `vae_*` are the
    audio VAE constructor widths, `vae_file` its name under `<selva_dir>/ext/`.
    """

    name: str
    sampling_rate: int
    n_fft: int
    hop: int
    win_length: int
    n_mels: int
    f_min: float
    f_max: float
    log_base: float
    vae_embed_dim: int
    vae_hidden_dim: int
    vae_file: str
    vocoder: str  # "bigvgan_v1" (best_netG.pt) or "bigvgan_v2" (HF repo)

    def sequence(self, duration: float = 8.0) -> SequenceConfig:
        """Sequence config of this mode for `duration` seconds."""
        return SequenceConfig(
            duration=duration,
            sampling_rate=self.sampling_rate,
            spectrogram_frame_rate=self.hop,
        )


MODES: dict[str, AudioMode] = {
    "16k": AudioMode(
        name="16k",
        sampling_rate=16000,
        n_fft=1024,
        hop=256,
        win_length=1024,
        n_mels=80,
        f_min=0.0,
        f_max=8000.0,
        log_base=10.0,
        vae_embed_dim=20,
        vae_hidden_dim=384,
        vae_file="v1-16.pth",
        vocoder="bigvgan_v1",
    ),
    "44k": AudioMode(
        name="44k",
        sampling_rate=44100,
        n_fft=2048,
        hop=512,
        win_length=2048,
        n_mels=128,
        f_min=0.0,
        f_max=22050.0,
        log_base=math.e,
        vae_embed_dim=40,
        vae_hidden_dim=512,
        vae_file="v1-44.pth",
        vocoder="bigvgan_v2",
    ),
}


@dataclass(frozen=True)
class Variant:
    """One generator variant: MM-DiT constructor arguments plus its audio mode.

    `hidden_dim` is always 64 * num_heads for the real variants. `generator_file` is the
    checkpoint name in the ComfyUI `models/selva/` layout. `tiny` marks test variants whose
    weights are generated (never downloaded).
    """

    name: str
    mode: str
    latent_dim: int
    hidden_dim: int
    depth: int
    fused_depth: int
    num_heads: int
    clip_dim: int = 1024
    sync_dim: int = 768
    text_dim: int = 1024
    mlp_ratio: float = 4.0
    text_seq_len: int = 77
    v2: bool = False
    tiny: bool = False
    generator_file: str = ""
    # Tiny variants shrink the VAE / vocoder / text tower as well; None = the real sizes.
    vae_embed_dim: int | None = None
    vae_hidden_dim: int | None = None
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def audio(self) -> AudioMode:
        """The audio mode record ("16k" / "44k")."""
        return MODES[self.mode]

    def sequence(self, duration: float = 8.0) -> SequenceConfig:
        """Sequence config of this variant's mode for `duration` seconds."""
        return self.audio.sequence(duration)

    @property
    def joint_depth(self) -> int:
        """Number of joint (three-stream) blocks; the last is pre-only."""
        return self.depth - self.fused_depth

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    @property
    def vae_dims(self) -> tuple[int, int, int]:
        """(data_dim = n_mels, embed_dim, hidden_dim) of this variant's audio VAE."""
        a = self.audio
        return (
            a.n_mels,
            self.vae_embed_dim or a.vae_embed_dim,
            self.vae_hidden_dim or a.vae_hidden_dim,
        )

    def generator_kwargs(self, duration: float = 8.0) -> dict:
        """Keyword arguments of `selva_engine.model.generator.Generator` for this variant."""
        seq = self.sequence(duration)
        return dict(
            latent_dim=self.latent_dim,
            clip_dim=self.clip_dim,
            sync_dim=self.sync_dim,
            text_dim=self.text_dim,
            hidden_dim=self.hidden_dim,
            depth=self.depth,
            fused_depth=self.fused_depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            latent_seq_len=seq.latent_seq_len,
            clip_seq_len=seq.clip_seq_len,
            sync_seq_len=seq.sync_seq_len,
            text_seq_len=self.text_seq_len,
            v2=self.v2,
        )


def _real(name: str, mode: str, latent: int, heads: int, depth: int, fused: int, **kw) -> Variant:
    return Variant(
        name=name,
        mode=mode,
        latent_dim=latent,
        hidden_dim=64 * heads,
        depth=depth,
        fused_depth=fused,
        num_heads=heads,
        generator_file=f"generator_{name.removesuffix('_v2')}_sup_5.pth",
        **kw,
    )


def _tiny(name: str, mode: str, latent: int) -> Variant:
    # Same architecture, small widths: 2 joint blocks (last pre-only) + 1 fused block,
    # head_dim 64 like the real models. Text features come from a tiny CLIP text tower of
    # width 64. Like the real modes, 44k has twice the latent channels of 16k (16 vs 8), so a
    # checkpoint of one tiny mode cannot load silently as the other.
    return Variant(
        name=name,
        mode=mode,
        latent_dim=latent,
        hidden_dim=128,
        depth=3,
        fused_depth=1,
        num_heads=2,
        text_dim=64,
        tiny=True,
        generator_file=f"generator_{name}_sup_5.pth",
        vae_embed_dim=latent,
        vae_hidden_dim=16,
    )


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _real("small_16k", "16k", 20, 7, 12, 8),
        _real("small_44k", "44k", 40, 7, 12, 8),
        _real("medium_44k", "44k", 40, 14, 12, 8),
        _real("large_44k", "44k", 40, 14, 21, 14),
        _real("large_44k_v2", "44k", 40, 14, 21, 14, v2=True),
        _tiny("tiny_16k", "16k", 8),
        _tiny("tiny_44k", "44k", 16),
    )
}


def variant_names(include_tiny: bool = True) -> list[str]:
    """Names of all known variants (real first)."""
    return [n for n, v in VARIANTS.items() if include_tiny or not v.tiny]


def get_variant(name: str) -> Variant:
    """Look up a variant by name; unknown names raise ValueError listing the valid ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unknown SelVA variant {name!r}; valid variants: {', '.join(VARIANTS)}"
        ) from None
