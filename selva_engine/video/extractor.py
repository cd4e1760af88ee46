"""The SelVA Feature Extractor node without ComfyUI: a video file + prompt -> the node's `.npz`.

`extract_video` follows the node step by step (golden/video/README.md section 3): VHS frames
and loaded_fps (`decode`), duration and frame choice, bicubic resize + clamp, optional mask,
sync padding (`frames`), then the encoders (`encoders.VideoEncoders`: CLIP on every CLIP frame,
T5 on the unstripped prompt with the 5 supplementary tokens prepended, TextSynch on segments of
16 frames with stride 8). `start=0` is exactly the node; `start > 0` skips the first frames
(VHS's `skip_first_frames`), used to cut a long video into consecutive clips.

Frames are decoded one at a time and resized at once, so host memory is bounded by the
resized frames (N x 384^2 + Ns x 224^2 floats), never by the source resolution or the video
length. `extract_videos` encodes several clips with batched encoder calls (our speed-up; the
results equal one clip at a time within float tolerance). `write_node_npz` writes the node's
file layout (`name_001.npz`, ...).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from selva_engine.video import frames as fr
from selva_engine.video.decode import (
    DecodeError,
    count_decoded_frames,
    decode_frames,
    iter_frames,
    read_stream_info,
)

if TYPE_CHECKING:
    from selva_engine.video.encoders import VideoEncoders

__all__ = ["MAX_DURATION", "NodeFeatures", "PreparedFrames", "extract_video", "extract_videos", "load_mask",
           "node_file_name", "prepare_frames", "sanitize_name", "write_node_npz"]

# Seconds of video one extraction may encode (the node has no limit; 10 minutes of frames
# resized to 384/224 px is ~11 GB of float32, so a longer request is refused with the fix).
MAX_DURATION = 600.0


@dataclass(frozen=True)
class NodeFeatures:
    """What the node saves for one clip (arrays with the batch dimension, float32)."""

    clip_features: np.ndarray   # (1, N, clip_dim) float32
    sync_features: np.ndarray   # (1, 8S, sync_dim) float32
    duration: float             # resolved, float64
    prompt: str
    fps: float                  # loaded_fps used


@dataclass(frozen=True)
class PreparedFrames:
    """One clip's model inputs before normalisation (float32 in [0, 1]).

    `clip` (N, 3, 384, 384) and `sync` (Np >= 16, 3, 224, 224) are resized, clamped, masked and
    (sync) padded; `clip_resized` / `sync_resized` are the same before the mask (only kept when
    asked, for the conformance debug arrays).
    """

    plan: fr.FramePlan
    clip: torch.Tensor
    sync: torch.Tensor
    skipped: int = 0
    clip_resized: torch.Tensor | None = None
    sync_resized: torch.Tensor | None = None


def load_mask(mask: np.ndarray | Path | str, *, start_frame: int = 0) -> np.ndarray:
    """A mask as float32 (M, H, W) in [0, 1] (1 = keep), from an array or a file.

    Arrays: (H, W) or (M, H, W). Files: an image (`.png`, `.jpg`, ...: its luminance, static)
    or a video (per frame: its first channel / 255, frames from `start_frame` on).
    """
    if isinstance(mask, np.ndarray):
        arr = mask.astype(np.float32, copy=False)
        arr = arr[None] if arr.ndim == 2 else arr
        if arr.ndim != 3 or arr.shape[0] == 0:
            raise ValueError(f"a mask is (H, W) or (M, H, W) (got shape {mask.shape})")
        return arr[start_frame:] if arr.shape[0] > 1 and start_frame else arr
    path = Path(mask)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                return (np.asarray(im.convert("L"), dtype=np.float32) / np.float32(255.0))[None]
        except OSError as exc:
            raise DecodeError(path, f"is not a readable mask image ({exc})",
                              "save the mask as an 8-bit grey PNG (white = keep)") from exc
    info = read_stream_info(path)
    frames = decode_frames(path, range(start_frame, info.frame_count))
    return np.ascontiguousarray(frames[..., 0])


def _skip_frames(fps: float, start: float) -> int:
    if start < 0:
        raise ValueError(f"start must be >= 0 seconds (got {start})")
    return int(round(start * fps))


def _resize_stream(path: Path, plan: fr.FramePlan, skipped: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode the planned frames one by one and resize each at once: (N,3,384,384), (Ns,3,224,224)."""
    clip_pos: dict[int, list[int]] = {}
    sync_pos: dict[int, list[int]] = {}
    for i, src in enumerate(plan.clip_indices):
        clip_pos.setdefault(int(src), []).append(i)
    for i, src in enumerate(plan.sync_indices):
        sync_pos.setdefault(int(src), []).append(i)
    clip = torch.empty(len(plan.clip_indices), 3, fr.CLIP_SIZE, fr.CLIP_SIZE)
    sync = torch.empty(len(plan.sync_indices), 3, fr.SYNC_SIZE, fr.SYNC_SIZE)
    seen = 0
    for index, rgb in iter_frames(path, (int(i) + skipped for i in plan.needed)):
        src = index - skipped
        x = torch.from_numpy(rgb).unsqueeze(0).to(torch.float32) / 255.0  # VHS: float32(u8) / 255
        if src in clip_pos:
            clip[clip_pos[src]] = fr.resize_frames(x, fr.CLIP_SIZE)
        if src in sync_pos:
            sync[sync_pos[src]] = fr.resize_frames(x, fr.SYNC_SIZE)
        seen += 1
    if seen != len(plan.needed):
        raise _ShortVideo()
    return clip, sync


class _ShortVideo(Exception):
    """Fewer frames decoded than the header declared (the plan must be redone on the real count)."""


def _plan(path: Path, frame_count: int, fps: float, skipped: int, duration: float, start: float) -> fr.FramePlan:
    if skipped >= frame_count:
        raise DecodeError(path, f"has {frame_count} frames, none after start {start} s", "choose a start inside the video")
    plan = fr.plan_frames(frame_count - skipped, fps, duration)
    if plan.duration > MAX_DURATION:
        raise DecodeError(path, f"is {plan.duration:.0f} s long; encoding more than {MAX_DURATION:.0f} s at once "
                          "would need too much memory", "give a duration (e.g. 8 seconds) or split the video")
    return plan


def prepare_frames(path: Path | str, *, duration: float = 0.0, start: float = 0.0,
                   mask: np.ndarray | Path | str | None = None, mask_strength: float = 1.0,
                   mask_clip: bool = True, mask_sync: bool = True, keep_resized: bool = False) -> PreparedFrames:
    """Decode, choose, resize, mask and pad one video's frames as the node does (no model)."""
    path = Path(path)
    info = read_stream_info(path)
    skipped = _skip_frames(info.fps, start)
    plan = _plan(path, info.frame_count, info.fps, skipped, duration, start)
    try:
        clip_resized, sync_resized = _resize_stream(path, plan, skipped)
    except _ShortVideo:  # the header over-counts: VHS uses the frames that decode, so do we
        plan = _plan(path, count_decoded_frames(path), info.fps, skipped, duration, start)
        try:
            clip_resized, sync_resized = _resize_stream(path, plan, skipped)
        except _ShortVideo:
            raise DecodeError(path, "decodes to a different number of frames each time",
                              "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`") from None
    clip, sync = clip_resized, sync_resized
    if mask is not None:
        m = torch.from_numpy(load_mask(mask, start_frame=skipped))
        if mask_clip:
            idx = fr.mask_indices(len(plan.clip_indices), plan.fps, fr.CLIP_FPS, m.shape[0])
            clip = fr.apply_mask(clip, fr.resize_mask(m, fr.CLIP_SIZE), idx, mask_strength)
        if mask_sync:
            idx = fr.mask_indices(len(plan.sync_indices), plan.fps, fr.SYNC_FPS, m.shape[0])
            sync = fr.apply_mask(sync, fr.resize_mask(m, fr.SYNC_SIZE), idx, mask_strength)
    return PreparedFrames(plan=plan, clip=clip, sync=fr.pad_sync(sync), skipped=skipped,
                          clip_resized=clip_resized if keep_resized else None,
                          sync_resized=sync_resized if keep_resized else None)


def _encode(prepared: Sequence[PreparedFrames], prompts: Sequence[str], encoders: VideoEncoders,
            segment_batch: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Encode clips; clips of equal frame counts share one batched call per encoder."""
    text_f, text_mask = encoders.encode_text(list(prompts))
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(prepared)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, p in enumerate(prepared):
        groups.setdefault((p.clip.shape[0], p.sync.shape[0]), []).append(i)
    for members in groups.values():
        clip = torch.stack([prepared[i].clip for i in members])
        sync = torch.stack([prepared[i].sync for i in members])
        clip_f = encoders.encode_clip(clip)
        sync_f = encoders.encode_sync(sync, text_f[members], text_mask[members], segment_batch=segment_batch)
        for row, i in enumerate(members):
            out[i] = (clip_f[row:row + 1].cpu().float().numpy(), sync_f[row:row + 1].cpu().float().numpy())
    return [o for o in out if o is not None]


def extract_videos(items: Sequence[tuple[PreparedFrames, str]], encoders: VideoEncoders, *,
                   segment_batch: int | None = None) -> list[NodeFeatures]:
    """Encode prepared clips with their prompts, batched; one NodeFeatures per item, in order."""
    if not items:
        return []
    with torch.inference_mode():
        encoded = _encode([p for p, _ in items], [q for _, q in items], encoders, segment_batch)
    return [NodeFeatures(clip_features=c, sync_features=s, duration=p.plan.duration, prompt=q, fps=p.plan.fps)
            for (p, q), (c, s) in zip(items, encoded, strict=True)]


def extract_video(path: Path, prompt: str, encoders: VideoEncoders, *, duration: float = 0.0,
                  start: float = 0.0, mask: np.ndarray | Path | None = None, mask_strength: float = 1.0,
                  mask_clip: bool = True, mask_sync: bool = True) -> NodeFeatures:
    """The node's features for one video file and prompt (raises DecodeError for a bad video)."""
    prepared = prepare_frames(path, duration=duration, start=start, mask=mask, mask_strength=mask_strength,
                              mask_clip=mask_clip, mask_sync=mask_sync)
    return extract_videos([(prepared, prompt)], encoders)[0]


def sanitize_name(name: str) -> str:
    """The node's file-name rule: stripped, with `/`, `\\` and NUL replaced by `_`."""
    clean = name.strip()
    for ch in ("/", "\\", "\x00"):
        clean = clean.replace(ch, "_")
    if not clean or clean in (".", ".."):
        raise ValueError(f"the output name {name!r} is empty once cleaned; give a name such as 'dog_bark'")
    return clean


def node_file_name(out_dir: Path | str, name: str) -> Path:
    """The first free `<name>_NNN.npz` in `out_dir` (001, 002, ...), as the node numbers its files."""
    base = sanitize_name(name)
    n = 1
    while (Path(out_dir) / f"{base}_{n:03d}.npz").exists():
        n += 1
    return Path(out_dir) / f"{base}_{n:03d}.npz"


def write_node_npz(features: NodeFeatures, out_dir: Path, name: str, variant: str) -> Path:
    """Write `features` as the node does (np.savez: float32 arrays with the batch dimension,
    float64 `duration`, 0-d unicode `prompt` / `variant`) to the first free `<name>_NNN.npz`.

    The file appears complete or not at all (written to a temporary name, then linked to the
    final one, which never replaces an existing file). Returns the path written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{sanitize_name(name)}.{os.getpid()}.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, clip_features=np.asarray(features.clip_features, dtype=np.float32),
                 sync_features=np.asarray(features.sync_features, dtype=np.float32),
                 duration=np.array(features.duration, dtype=np.float64),
                 prompt=np.array(features.prompt), variant=np.array(variant))
        f.flush()
        os.fsync(f.fileno())
    try:
        while True:
            target = node_file_name(out_dir, name)
            try:
                os.link(tmp, target)  # fails if another writer took the number meanwhile
                return target
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)
