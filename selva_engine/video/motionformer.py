"""MotionFormer (the video half of SelVA's TextSynch): divided space-time attention over
16-frame, 224 px segments, plus the per-time-step spatial aggregator. Key layout as in
`video_enc_sup_5.pth` under `vfeat_extractor.`; our own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MotionFormer"]


class PatchEmbed(nn.Module):
    """A convolution with kernel = stride (2-D or 3-D), under a `proj` key."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.proj = conv


class DividedAttention(nn.Module):
    """Self-attention restricted to one frame ("space") or one spatial position ("time").

    The CLS query attends to every token; each patch query attends to the CLS key plus the
    tokens of its own frame (space) or of its own position across frames (time).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, frames: int, mode: str) -> torch.Tensor:
        b, n, d = x.shape
        h, hd = self.heads, d // self.heads
        q, k, v = self.qkv(x).view(b, n, 3, h, hd).permute(2, 0, 3, 1, 4)  # (b, h, n, hd) each
        cls_out = F.scaled_dot_product_attention(q[:, :, :1], k, v)  # (b, h, 1, hd)
        s = (n - 1) // frames

        def group(t: torch.Tensor) -> torch.Tensor:  # (b, h, T*S, hd) -> (b*groups, h, len, hd)
            t = t[:, :, 1:].reshape(b, h, frames, s, hd)
            if mode == "time":
                t = t.transpose(2, 3)  # (b, h, S, T, hd)
            return t.permute(0, 2, 1, 3, 4).reshape(-1, h, t.shape[3], hd)

        groups = s if mode == "time" else frames
        qg, kg, vg = group(q), group(k), group(v)
        k_cls = k[:, :, :1].repeat_interleave(groups, dim=0)
        v_cls = v[:, :, :1].repeat_interleave(groups, dim=0)
        out = F.scaled_dot_product_attention(qg, torch.cat([k_cls, kg], 2), torch.cat([v_cls, vg], 2))
        out = out.reshape(b, groups, h, -1, hd).permute(0, 2, 1, 3, 4)  # (b, h, groups, len, hd)
        if mode == "time":
            out = out.transpose(2, 3)  # back to (b, h, T, S, hd)
        out = torch.cat([cls_out, out.reshape(b, h, frames * s, hd)], dim=2)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """x += time-attn(norm3 x); x += space-attn(norm1 x); x += mlp(norm2 x)."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim, eps=1e-6) for _ in range(3))
        self.attn = DividedAttention(dim, heads)
        self.timeattn = DividedAttention(dim, heads)
        self.mlp = Mlp(dim, mlp)

    def forward(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        x = x + self.timeattn(self.norm3(x), frames, "time")
        x = x + self.attn(self.norm1(x), frames, "space")
        return x + self.mlp(self.norm2(x))


class MotionFormer(nn.Module):
    """`tokens`: (B, 3, T, 224, 224) -> (B, T/2 * S, D) normed patch tokens (CLS dropped);
    `aggregate`: (B, T/2 * S, D) -> (B, T/2, D) via one pre-norm encoder layer per time step."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, frames: int, mlp: int) -> None:
        super().__init__()
        grid, steps = 224 // patch, frames // 2
        self.steps = steps
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.temp_embed = nn.Parameter(torch.zeros(1, steps, dim))
        self.patch_embed = PatchEmbed(nn.Conv2d(3, dim, patch, patch))  # unused, kept for the keys
        self.patch_embed_3d = PatchEmbed(nn.Conv3d(3, dim, (2, patch, patch), (2, patch, patch)))
        self.blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.spatial_attn_agg = SpatialAggregator(dim, heads, mlp)

    def tokens(self, video: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed_3d.proj(video)  # (B, D, T', g, g)
        b, d, t = x.shape[:3]
        x = x.flatten(2).transpose(1, 2)  # (B, T'*S, D), order t, y, x
        s = x.shape[1] // t
        pos = self.pos_embed[:, 1:].unsqueeze(1) + self.temp_embed[:, :t].unsqueeze(2)  # (1, T', S, D)
        x = x + pos.reshape(1, t * s, d)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in self.blocks:
            x = block(x, t)
        return self.norm(x[:, 1:])

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return self.spatial_attn_agg(x.reshape(b * self.steps, n // self.steps, d)).view(b, self.steps, d)


class SpatialAggregator(nn.TransformerEncoderLayer):
    """One pre-norm encoder layer over [cls, spatial tokens]; returns the CLS output."""

    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__(dim, heads, mlp, dropout=0.0, activation="gelu", layer_norm_eps=1e-6,
                         batch_first=True, norm_first=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return super().forward(x)[:, 0]
