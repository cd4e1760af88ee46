"""The node's frame arithmetic: duration, frame choice, resize, masks, sync padding.

Every rule here is the ComfyUI-SelVA Feature Extractor's, pinned by the `frame_select`,
`resize` and `e2e_*` goldens (golden/video/README.md sections 3, 8, 9):

- duration: `d = T / fps` when the widget is <= 0, else the widget; then `min(d, T / fps)`;
  no 8-second cut (float64);
- frame choice at a target rate: `n = max(1, int(d * target))` frames, output i takes source
  frame `min(int(i / target * fps), T - 1)`, evaluated left to right in float64 (not the exact
  rational floor: 25 -> 25 fps output 29 takes frame 28);
- resize: bicubic, align_corners False, no antialias, aspect ratio not kept, then clamp(0, 1);
- masks: resized with nearest-exact after the frames, per-frame masks indexed with the same
  formula clamped to the mask's length, background blended to grey 0.5 with a strength;
- sync: fewer than 16 frames -> the last one repeated to 16; segments of 16 with stride 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["CLIP_FPS", "CLIP_MEAN", "CLIP_SIZE", "CLIP_STD", "FramePlan", "SEGMENT_FRAMES", "SEGMENT_STRIDE",
           "SYNC_FPS", "SYNC_SIZE", "apply_mask", "clip_normalize", "mask_indices", "num_segments",
           "pad_sync", "pad_sync_indices", "plan_frames", "resize_frames", "resize_mask", "resolve_duration",
           "sample_indices", "sync_normalize"]

CLIP_FPS = 8.0
SYNC_FPS = 25.0
CLIP_SIZE = 384
SYNC_SIZE = 224
SEGMENT_FRAMES = 16
SEGMENT_STRIDE = 8
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resolve_duration(num_frames: int, fps: float, duration: float = 0.0) -> float:
    """Seconds the node encodes: the widget (<= 0: the whole clip), at most T / fps (float64)."""
    if num_frames <= 0 or not fps > 0:
        raise ValueError(f"need frames and a positive fps (got {num_frames} frames at {fps} fps)")
    full = num_frames / fps
    d = full if duration <= 0 else float(duration)
    return min(d, full)


def sample_indices(num_frames: int, fps: float, duration: float, target_fps: float) -> np.ndarray:
    """Source frame of each output frame at `target_fps`: int64 (max(1, int(d * target)),)."""
    n = max(1, int(duration * target_fps))
    return np.array([min(int(i / target_fps * fps), num_frames - 1) for i in range(n)], dtype=np.int64)


def mask_indices(num_out: int, fps: float, target_fps: float, mask_len: int) -> np.ndarray:
    """Mask frame used by each of `num_out` sampled frames (a 1-frame mask is static)."""
    if mask_len == 1:
        return np.zeros(num_out, dtype=np.int64)
    return np.array([min(int(i / target_fps * fps), mask_len - 1) for i in range(num_out)], dtype=np.int64)


def pad_sync_indices(indices: np.ndarray) -> np.ndarray:
    """Fewer than 16 sync frames: the last index repeated up to 16 (else unchanged)."""
    if len(indices) >= SEGMENT_FRAMES:
        return indices
    return np.concatenate([indices, np.full(SEGMENT_FRAMES - len(indices), indices[-1], dtype=indices.dtype)])


def num_segments(num_sync_padded: int) -> int:
    """Segments of 16 frames with stride 8 (trailing frames that do not fill one are dropped)."""
    return (num_sync_padded - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1


@dataclass(frozen=True)
class FramePlan:
    """Which source frames the node encodes for one video (all index arrays int64)."""

    num_frames: int
    fps: float
    duration: float
    clip_indices: np.ndarray       # (N,)
    sync_indices: np.ndarray       # (Ns,) before padding
    sync_indices_padded: np.ndarray  # (max(Ns, 16),)

    @property
    def num_segments(self) -> int:
        """S: TextSynch segments, so 8 * S sync feature rows."""
        return num_segments(len(self.sync_indices_padded))

    @property
    def needed(self) -> np.ndarray:
        """Sorted unique source frames to decode."""
        return np.unique(np.concatenate([self.clip_indices, self.sync_indices]))


def plan_frames(num_frames: int, fps: float, duration: float = 0.0) -> FramePlan:
    """The node's frame choice for a video of `num_frames` at `fps` and the `duration` widget."""
    d = resolve_duration(num_frames, fps, duration)
    sync = sample_indices(num_frames, fps, d, SYNC_FPS)
    return FramePlan(num_frames=num_frames, fps=fps, duration=d,
                     clip_indices=sample_indices(num_frames, fps, d, CLIP_FPS),
                     sync_indices=sync, sync_indices_padded=pad_sync_indices(sync))


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W, 3) float in [0, 1] -> (N, 3, size, size): bicubic, no antialias, then clamp(0, 1).

    The input is made contiguous (N, 3, H, W) first: PyTorch's CPU kernel is about twice as fast
    on that layout than on the permuted view the node passes, with bit-identical results
    (the e2e goldens' SHA-256 of the resized frames pin it).
    """
    x = frames.permute(0, 3, 1, 2).contiguous()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(0.0, 1.0)


def resize_mask(mask: torch.Tensor, size: int) -> torch.Tensor:
    """(M, H, W) mask -> (M, size, size) with nearest-exact (the node resizes it to the frames)."""
    return F.interpolate(mask.float().unsqueeze(1), size=(size, size), mode="nearest-exact").squeeze(1)


def apply_mask(frames: torch.Tensor, mask: torch.Tensor, indices: np.ndarray, strength: float) -> torch.Tensor:
    """Blend frames (N, 3, s, s) toward grey 0.5 outside the mask (M, s, s); frame i uses mask[indices[i]].

    `a = 1 - strength * (1 - mask)`; `frames * a + 0.5 * (1 - a)`.
    """
    m = mask[torch.as_tensor(indices, dtype=torch.long)].unsqueeze(1)  # (N, 1, s, s)
    a = 1.0 - strength * (1.0 - m)
    return frames * a + 0.5 * (1.0 - a)


def pad_sync(frames: torch.Tensor) -> torch.Tensor:
    """(Ns, 3, s, s): fewer than 16 frames -> the last one repeated up to 16."""
    n = frames.shape[0]
    if n >= SEGMENT_FRAMES:
        return frames
    return torch.cat([frames, frames[-1:].expand(SEGMENT_FRAMES - n, *frames.shape[1:])], dim=0)


def clip_normalize(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """CLIP input: cast to the model dtype first, then (x - mean) / std in that dtype (the node's order)."""
    x = frames.to(dtype)
    shape = (3, 1, 1)
    mean = torch.tensor(CLIP_MEAN, dtype=dtype, device=x.device).view(shape)
    std = torch.tensor(CLIP_STD, dtype=dtype, device=x.device).view(shape)
    return (x - mean) / std


def sync_normalize(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sync input: (x - 0.5) / 0.5 in float32, then cast to the model dtype."""
    return ((frames.float() - 0.5) / 0.5).to(dtype)
