"""TextSynch (SelVA's text-conditioned synchronisation encoder), weight-compatible with
`video_enc_sup_5.pth`.

One 16-frame segment in [-1, 1] goes through MotionFormer (divided space-time attention,
`motionformer.py`), then the video tokens attend to the projected prompt tokens in one or more
cross-attention blocks, then a small transformer per time step pools its spatial tokens into one
vector: 8 feature rows per segment. All sizes are read from the state dict (the real file:
width 768, 12 blocks; the tiny one: width 64, 2 blocks); only the attention head count is not in
the shapes and is derived from the cross block's head norm (head width 64 real, 16 tiny).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selva_engine.io import safe_torch_load
from selva_engine.video.motionformer import MotionFormer

__all__ = ["TextSynch", "TextSynchConfig", "TextSynchError", "config_from_state_dict", "load_textsynch"]

FILE_NAME = "video_enc_sup_5.pth"
_PREFIXES = ("vfeat_extractor.", "text_proj.", "synch_text_cross_blocks.", "sup_text_feat",
             "empty_string_feat")


class TextSynchError(ValueError):
    """A TextSynch weights file is not in the layout `video_enc_sup_5.pth` uses."""


@dataclass(frozen=True)
class TextSynchConfig:
    """Sizes of one TextSynch; `config_from_state_dict` reads them from a checkpoint."""

    width: int = 768
    depth: int = 12
    heads: int = 12
    patch: int = 16
    frames: int = 16
    mlp: int = 3072
    text_dim: int = 768
    swiglu: int = 2048
    cross_depth: int = 1
    sup_tokens: int = 5


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x), no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class CrossAttention(nn.Module):
    """Queries from video tokens, keys/values from text; RMS-normed heads; key mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(dim, 2 * dim)
        self.q_norm = nn.RMSNorm(head_dim, eps=torch.finfo(torch.float32).eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=torch.finfo(torch.float32).eps)

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q_proj(x).view(b, n, h, d // h).transpose(1, 2)
        kv = self.kv_proj(c).view(b, c.shape[1], h, d // h, 2)  # k/v interleaved, fastest axis
        k, v = kv[..., 0].transpose(1, 2), kv[..., 1].transpose(1, 2)
        q, k = self.q_norm(q), self.k_norm(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask[:, None, None, :])
        return out.transpose(1, 2).reshape(b, n, d)


class CrossBlock(nn.Module):
    """x += norm1(linear1(attn(x, text))); x += ffn(norm2(x))."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.attn = CrossAttention(dim, heads)
        self.linear1 = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = SwiGLU(dim, hidden)

    def forward(self, x: torch.Tensor, c: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.norm1(self.linear1(self.attn(x, c, key_mask)))
        return x + self.ffn(self.norm2(x))


class TextSynch(nn.Module):
    """Segments (B, 3, 16, 224, 224) in [-1, 1] + prepended text -> (B, 8, width) features."""

    def __init__(self, cfg: TextSynchConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.sup_text_feat = nn.Parameter(torch.zeros(cfg.sup_tokens, cfg.text_dim))
        self.empty_string_feat = nn.Parameter(torch.zeros(1, cfg.text_dim))
        self.vfeat_extractor = MotionFormer(cfg.width, cfg.depth, cfg.heads, cfg.patch, cfg.frames, cfg.mlp)
        self.text_proj = nn.Sequential(nn.Linear(cfg.text_dim, cfg.width), nn.SiLU(),
                                       SwiGLU(cfg.width, cfg.swiglu))
        self.synch_text_cross_blocks = nn.ModuleList(
            CrossBlock(cfg.width, cfg.heads, cfg.swiglu) for _ in range(cfg.cross_depth))

    def prepend_sup_text(self, text_f: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, text_dim), (B, L) bool -> with the supplementary tokens in front (B, 5+L)."""
        b = text_f.shape[0]
        sup = self.sup_text_feat.to(text_f.dtype).unsqueeze(0).expand(b, -1, -1)
        ones = torch.ones(b, self.cfg.sup_tokens, dtype=torch.bool, device=mask.device)
        return torch.cat([sup, text_f], dim=1), torch.cat([ones, mask.bool()], dim=1)

    def forward(self, segments: torch.Tensor, text_f: torch.Tensor, text_mask: torch.Tensor,
                debug: dict | None = None) -> torch.Tensor:
        """`text_f`/`text_mask` already prepended, one row per segment."""
        tokens = self.vfeat_extractor.tokens(segments)  # (B, T*S, D)
        text = self.text_proj(text_f)
        x = tokens
        for block in self.synch_text_cross_blocks:
            x = block(x, text, text_mask.bool())
        if debug is not None:
            debug.update(tokens=tokens, text_proj=text, cross=x)
        return self.vfeat_extractor.aggregate(x)


def config_from_state_dict(sd: dict[str, torch.Tensor], frames: int = 16) -> TextSynchConfig:
    """Sizes of the TextSynch that `sd` belongs to (raises TextSynchError when keys are missing)."""
    try:
        width = sd["vfeat_extractor.cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("vfeat_extractor.blocks."))
        cross = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("synch_text_cross_blocks."))
        head_dim = sd["synch_text_cross_blocks.0.attn.q_norm.weight"].shape[0]
        return TextSynchConfig(
            width=width, depth=depth, heads=width // head_dim,
            patch=sd["vfeat_extractor.patch_embed_3d.proj.weight"].shape[-1], frames=frames,
            mlp=sd["vfeat_extractor.blocks.0.mlp.fc1.weight"].shape[0],
            text_dim=sd["text_proj.0.weight"].shape[1], swiglu=sd["text_proj.2.w1.weight"].shape[0],
            cross_depth=cross, sup_tokens=sd["sup_text_feat"].shape[0])
    except (KeyError, ValueError, IndexError) as exc:
        raise TextSynchError(f"not a TextSynch state dict (missing {exc})") from None


def _state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise TextSynchError(f"{path}: not a state dict; expected SelVA's {FILE_NAME}")
    sd = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return {k: v for k, v in sd.items() if k.startswith(_PREFIXES)}


def load_textsynch(source: Path | str | dict, *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> TextSynch:
    """TextSynch from `video_enc_sup_5.pth` (weights_only load) or a state dict, in eval mode."""
    path = Path(source) if not isinstance(source, dict) else Path("<state dict>")
    raw = source if isinstance(source, dict) else safe_torch_load(
        path, what="TextSynch weights", fix=f"download {FILE_NAME} from huggingface.co/jnwnlee/SelVA")
    sd = _state_dict(raw, path)
    try:
        cfg = config_from_state_dict(sd)
    except TextSynchError as exc:
        raise TextSynchError(f"{path}: {exc}; expected SelVA's {FILE_NAME}") from None
    with torch.device("meta"):
        model = TextSynch(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(sd))
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or wrong:
        raise TextSynchError(f"{path}: missing {missing[:3]} / wrong shapes {wrong[:3]}; "
                             f"expected SelVA's {FILE_NAME}")
    model.load_state_dict({k: sd[k].float() for k in expected}, strict=True, assign=True)
    return model.requires_grad_(False).eval().to(device=device, dtype=dtype)
