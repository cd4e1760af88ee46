"""The SelVA / MMAudio MM-DiT generator, weight-compatible with the published checkpoints.

Conditions are preprocessed once per clip (`preprocess_conditions`) and reused at every
flow step (`predict_flow`), as the reference splits them. Streams are channel-last:
latent (B, N, L), clip (B, Nc, clip_dim), sync (B, Ns, sync_dim), text (B, Nt, text_dim).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from selva_engine.io import UnsafeFileError, safe_torch_load
from selva_engine.model.layers import (
    MLP,
    ChannelLastConv1d,
    ConvMLP,
    FinalBlock,
    JointBlock,
    SingleBlock,
    TimestepEmbedder,
    rope_table,
)

__all__ = ["Conditions", "Generator", "GeneratorLoadError", "load_generator", "DROPPED_KEYS"]

# Non-persistent buffers that older checkpoints may still contain; recomputed from the config.
DROPPED_KEYS = ("t_embed.freqs", "latent_rot", "clip_rot")


@dataclass
class Conditions:
    """Preprocessed conditions: projected streams and pooled vectors.

    clip_f (B, Nc, D), sync_f (B, N, D) (already upsampled to the latent rate),
    text_f (B, Nt, D), clip_f_c and text_f_c (B, D).
    """

    clip_f: torch.Tensor
    sync_f: torch.Tensor
    text_f: torch.Tensor
    clip_f_c: torch.Tensor
    text_f_c: torch.Tensor

    def _map(self, fn) -> Conditions:
        return Conditions(*(fn(getattr(self, f.name)) for f in fields(self)))

    def expand(self, batch: int) -> Conditions:
        """Broadcast batch-1 conditions to `batch` (views, no copy)."""
        return self._map(lambda x: x.expand(batch, *x.shape[1:]))

    def to(self, *args, **kwargs) -> Conditions:
        return self._map(lambda x: x.to(*args, **kwargs))

    def index(self, idx: torch.Tensor | slice) -> Conditions:
        return self._map(lambda x: x[idx])

    @staticmethod
    def cat(items: list[Conditions]) -> Conditions:
        """Concatenate along the batch axis."""
        return Conditions(
            *(torch.cat([getattr(c, f.name) for c in items], dim=0) for f in fields(Conditions))
        )


class Generator(nn.Module):
    """MM-DiT flow-matching generator (MMAudio's network; SelVA uses it unchanged).

    Keyword-only constructor mirroring the reference; `v2=True` is MMAudio's large_44k_v2
    (SiLU input projections, extra SiLU after the clip/text Linear, wide time embedding).
    """

    def __init__(
        self,
        *,
        latent_dim: int,
        clip_dim: int,
        sync_dim: int,
        text_dim: int,
        hidden_dim: int,
        depth: int,
        fused_depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        latent_seq_len: int,
        clip_seq_len: int,
        sync_seq_len: int,
        text_seq_len: int = 77,
        v2: bool = False,
    ) -> None:
        super().__init__()
        if hidden_dim % num_heads:
            raise ValueError(f"hidden_dim {hidden_dim} is not a multiple of num_heads {num_heads}")
        if sync_seq_len % 8:
            raise ValueError(f"sync_seq_len {sync_seq_len} must be a multiple of 8 (segments)")
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        self.num_heads = num_heads
        self.head_dim = hidden_dim // num_heads
        self.v2 = v2
        self.text_seq_len = text_seq_len
        self.depth = depth
        self.fused_depth = fused_depth
        # recompute each transformer block's activations in the backward pass instead of
        # keeping them (less memory, one more block forward per step); training only
        self.gradient_checkpointing = False
        d = hidden_dim
        act = nn.SiLU if v2 else nn.SELU

        # Registration order = checkpoint key order.
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, 8, sync_dim))
        self.latent_mean = nn.Parameter(torch.full((1, 1, latent_dim), float("nan")), requires_grad=False)
        self.latent_std = nn.Parameter(torch.full((1, 1, latent_dim), float("nan")), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(text_seq_len, text_dim), requires_grad=False)
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, sync_dim))

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(latent_dim, d, kernel_size=7, padding=3),
            act(),
            ConvMLP(d, d * 4, kernel_size=7, padding=3),
        )
        clip_mid = [nn.SiLU()] if v2 else []
        self.clip_input_proj = nn.Sequential(
            nn.Linear(clip_dim, d), *clip_mid, ConvMLP(d, d * 4, kernel_size=3, padding=1)
        )
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(sync_dim, d, kernel_size=7, padding=3),
            act(),
            ConvMLP(d, d * 4, kernel_size=3, padding=1),
        )
        text_mid = [nn.SiLU()] if v2 else []
        self.text_input_proj = nn.Sequential(nn.Linear(text_dim, d), *text_mid, MLP(d, d * 4))
        self.clip_cond_proj = nn.Linear(d, d)
        self.text_cond_proj = nn.Linear(d, d)
        self.global_cond_mlp = MLP(d, d * 4)
        self.final_layer = FinalBlock(d, latent_dim)
        if v2:
            self.t_embed = TimestepEmbedder(d, frequency_embedding_size=d, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(d, frequency_embedding_size=256, max_period=10000)
        joint = depth - fused_depth
        self.joint_blocks = nn.ModuleList(
            JointBlock(d, num_heads, mlp_ratio, pre_only=(i == joint - 1)) for i in range(joint)
        )
        self.fused_blocks = nn.ModuleList(
            SingleBlock(d, num_heads, mlp_ratio, kernel_size=3, padding=1) for _ in range(fused_depth)
        )
        self.update_seq_lengths(latent_seq_len, clip_seq_len, sync_seq_len)

    # ------------------------------------------------------------------ sequence lengths
    def update_seq_lengths(self, latent_seq_len: int, clip_seq_len: int, sync_seq_len: int) -> None:
        """Set the stream lengths (another clip duration) and recompute the RoPE tables."""
        self.latent_seq_len = latent_seq_len
        self.clip_seq_len = clip_seq_len
        self.sync_seq_len = sync_seq_len
        self._rebuild_rope()

    def _rebuild_rope(self) -> None:
        device = self.sync_pos_emb.device
        n, nc = self.latent_seq_len, self.clip_seq_len
        self.register_buffer("latent_rot", rope_table(n, self.head_dim).to(device), persistent=False)
        self.register_buffer(
            "clip_rot", rope_table(nc, self.head_dim, freq_scale=n / nc).to(device), persistent=False
        )

    def reset_buffers(self) -> None:
        """Recompute every non-persistent buffer on the parameters' device (after assign-loading)."""
        self.t_embed.reset_buffers()
        self._rebuild_rope()

    # ------------------------------------------------------------------ latent normalisation
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Raw VAE latent (B, N, L) -> the flow model's normalised space (new tensor)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised latent (B, N, L) -> raw VAE latent (new tensor)."""
        return x * self.latent_std + self.latent_mean

    # ------------------------------------------------------------------ conditions
    def _check_len(self, name: str, x: torch.Tensor, expected: int) -> None:
        if x.dim() != 3 or x.shape[1] != expected:
            raise ValueError(
                f"{name} must be (B, {expected}, C) for this generator, got {tuple(x.shape)}; "
                "pad/truncate the features or call update_seq_lengths() for another duration"
            )

    def preprocess_conditions(
        self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor
    ) -> Conditions:
        """Project the three condition streams once; independent of t and the latent.

        clip_f (B, Nc, clip_dim), sync_f (B, Ns, sync_dim), text_f (B, Nt, text_dim). Batch
        sizes may differ only when one of them is 1 (it broadcasts).
        """
        self._check_len("clip_f", clip_f, self.clip_seq_len)
        self._check_len("sync_f", sync_f, self.sync_seq_len)
        self._check_len("text_f", text_f, self.text_seq_len)
        b, ns, ds = sync_f.shape
        # one learned embedding per position inside each 8-frame sync segment
        sync_f = (sync_f.view(b, ns // 8, 8, ds) + self.sync_pos_emb).flatten(1, 2)
        clip_f = self.clip_input_proj(clip_f)  # (B, Nc, D)
        sync_f = self.sync_input_proj(sync_f)  # (B, Ns, D)
        text_f = self.text_input_proj(text_f)  # (B, Nt, D)
        # upsample sync to the latent rate (nearest-exact, float32 index arithmetic)
        sync_f = F.interpolate(
            sync_f.transpose(1, 2), size=self.latent_seq_len, mode="nearest-exact"
        ).transpose(1, 2)
        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))  # (B, D)
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))  # (B, D)
        return Conditions(clip_f, sync_f, text_f, clip_f_c, text_f_c)

    def empty_conditions(
        self, batch: int, negative_text_features: torch.Tensor | None = None
    ) -> Conditions:
        """Unconditional branch: learned empty clip/sync tokens plus empty (or negative) text.

        negative_text_features: optional (B or 1, Nt, text_dim) CLIP features of a negative
        prompt replacing `empty_string_feat`. Computed at batch 1 where possible, expanded.
        """
        clip = self.empty_clip_feat.expand(self.clip_seq_len, -1).unsqueeze(0)
        sync = self.empty_sync_feat.expand(self.sync_seq_len, -1).unsqueeze(0)
        if negative_text_features is None:
            text = self.empty_string_feat.unsqueeze(0)
        else:
            text = negative_text_features.to(self.empty_string_feat.dtype)
        cond = self.preprocess_conditions(clip, sync, text)
        return cond.expand(batch) if cond.text_f.shape[0] == 1 else Conditions(
            cond.clip_f.expand(batch, -1, -1),
            cond.sync_f.expand(batch, -1, -1),
            cond.text_f,
            cond.clip_f_c.expand(batch, -1),
            cond.text_f_c,
        )

    # ------------------------------------------------------------------ flow
    def predict_flow(self, latent: torch.Tensor, t: torch.Tensor, cond: Conditions) -> torch.Tensor:
        """Velocity (B, N, L) at flow time t (B,) for a normalised latent (B, N, L)."""
        self._check_len("latent", latent, self.latent_seq_len)
        x = self.audio_input_proj(latent)  # (B, N, D)
        g = self.global_cond_mlp(cond.clip_f_c + cond.text_f_c)  # (B, D)
        global_c = (self.t_embed(t) + g).unsqueeze(1)  # (B, 1, D)
        extended_c = global_c + cond.sync_f  # (B, N, D)
        clip_f, text_f = cond.clip_f, cond.text_f
        run = self._checkpointed if self.gradient_checkpointing and torch.is_grad_enabled() else _call
        for block in self.joint_blocks:
            x, clip_f, text_f = run(
                block, x, clip_f, text_f, global_c, extended_c, self.latent_rot, self.clip_rot
            )
        for block in self.fused_blocks:
            x = run(block, x, extended_c, self.latent_rot)
        # the released weights were trained with global_c (not extended_c) here
        return self.final_layer(x, global_c)

    @staticmethod
    def _checkpointed(block: nn.Module, *args: torch.Tensor):
        """block(*args) with its activations recomputed in the backward pass (non-reentrant
        checkpointing: autocast state and RNG are replayed, so gradients are unchanged)."""
        return checkpoint(block, *args, use_reentrant=False)

    def forward(
        self,
        latent: torch.Tensor,
        clip_f: torch.Tensor,
        sync_f: torch.Tensor,
        text_f: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """predict_flow(latent, t, preprocess_conditions(clip_f, sync_f, text_f))."""
        return self.predict_flow(latent, t, self.preprocess_conditions(clip_f, sync_f, text_f))

    def guided_flow(
        self,
        latent: torch.Tensor,
        t: torch.Tensor | float,
        cond: Conditions,
        empty: Conditions,
        cfg_strength: float,
    ) -> torch.Tensor:
        """Classifier-free guided velocity: w*v_cond + (1-w)*v_uncond, or v_cond when w < 1.

        Both branches run as one batch of 2B when guidance is on.
        """
        b = latent.shape[0]
        if not torch.is_tensor(t) or t.dim() == 0:
            t = torch.as_tensor(t, dtype=latent.dtype, device=latent.device).expand(b)
        if cfg_strength < 1.0:
            return self.predict_flow(latent, t, cond)
        both = self.predict_flow(
            torch.cat([latent, latent]), torch.cat([t, t]), Conditions.cat([cond, empty])
        )
        v_cond, v_uncond = both[:b], both[b:]
        return cfg_strength * v_cond + (1 - cfg_strength) * v_uncond


def _call(block: nn.Module, *args: torch.Tensor):
    return block(*args)


class GeneratorLoadError(ValueError):
    """A generator checkpoint does not match the variant it is loaded as."""

    def __init__(self, path: Path | str, variant: str, problem: str) -> None:
        self.path = Path(path)
        self.variant = variant
        super().__init__(f"{self.path}: cannot load as generator variant {variant!r}: {problem}")


def _describe_mismatch(model_sd: dict, ckpt: dict, limit: int = 5) -> str:
    missing = [k for k in model_sd if k not in ckpt]
    unexpected = [k for k in ckpt if k not in model_sd]
    shaped = [
        f"{k} (file {tuple(ckpt[k].shape)}, model {tuple(model_sd[k].shape)})"
        for k in model_sd
        if k in ckpt and tuple(ckpt[k].shape) != tuple(model_sd[k].shape)
    ]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


def load_generator(
    path: Path | str,
    variant,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    duration: float = 8.0,
) -> Generator:
    """Build the generator of `variant` (a Variant or its name) and load a SelVA checkpoint.

    The file must be a flat state dict (loaded with weights_only=True). `t_embed.freqs`,
    `latent_rot` and `clip_rot` are dropped if present; the rest must match exactly
    (strict). Tensors are cast to `dtype` (checkpoint dtypes are not documented). The model
    is built on the meta device and the loaded tensors are assigned, so no second copy of
    the weights is allocated. Returns the model in eval mode with all parameters frozen.
    """
    from selva_engine.model.variants import get_variant

    v = get_variant(variant) if isinstance(variant, str) else variant
    ckpt = safe_torch_load(
        path,
        what=f"generator checkpoint for {v.name}",
        fix=f"download {v.generator_file} again or point selva_dir at the right directory",
    )
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(x) for x in ckpt.values()):
        raise GeneratorLoadError(path, v.name, "not a flat state dict of tensors")
    ckpt = {k: t for k, t in ckpt.items() if k not in DROPPED_KEYS}
    with torch.device("meta"):
        model = Generator(**v.generator_kwargs(duration))
    model_sd = model.state_dict()
    problem = _describe_mismatch(model_sd, ckpt)
    if problem:
        raise GeneratorLoadError(path, v.name, problem)
    ckpt = {k: t.to(device=device, dtype=dtype) for k, t in ckpt.items()}
    try:
        model.load_state_dict(ckpt, strict=True, assign=True)
    except RuntimeError as exc:  # pragma: no cover - guarded by the explicit comparison
        raise GeneratorLoadError(path, v.name, str(exc)) from exc
    model.reset_buffers()
    for name in ("latent_mean", "latent_std", "empty_string_feat"):
        getattr(model, name).requires_grad_(False)
    if not torch.isfinite(model.latent_std).all() or (model.latent_std <= 0).any():
        raise GeneratorLoadError(path, v.name, "latent_std is not finite and positive")
    model.requires_grad_(False)
    return model.eval()


__all__ += ["UnsafeFileError"]
