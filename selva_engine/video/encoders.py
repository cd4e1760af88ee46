"""The three video-feature encoders of SelVA's feature extractor, loaded together.

`load_video_encoders(selva_dir)` finds TextSynch (`<selva_dir>/video_enc_sup_5.pth`), FLAN-T5
(`<selva_dir>/t5/` for tiny weights, else the Hugging Face cache) and the CLIP image tower
(the same open_clip directory as the text encoder) and returns a `VideoEncoders` whose methods
take frames already resized/clamped/masked (not normalised) and do the node's normalisation
in the node's dtypes.
"""

from __future__ import annotations

import gc
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from selva_engine.io import file_fingerprint
from selva_engine.video.clip_vision import (
    encode_images,
    find_clip_dir,
    load_clip_vision,
    normalize_frames,
)
from selva_engine.video.t5 import T5Encoder, find_t5_dir
from selva_engine.video.textsynch import FILE_NAME, TextSynch, load_textsynch

__all__ = ["SEGMENT", "STRIDE", "VideoEncoders", "load_video_encoders"]

SEGMENT, STRIDE = 16, 8


@dataclass
class VideoEncoders:
    """CLIP image tower + T5 + TextSynch on one device in one dtype."""

    identity: str
    device: torch.device
    dtype: torch.dtype
    clip: nn.Module | None = field(repr=False, default=None)
    t5: T5Encoder | None = field(repr=False, default=None)
    textsynch: TextSynch | None = field(repr=False, default=None)

    def _live(self) -> tuple[nn.Module, T5Encoder, TextSynch]:
        if self.clip is None or self.t5 is None or self.textsynch is None:
            raise RuntimeError("video encoders were freed")
        return self.clip, self.t5, self.textsynch

    @property
    def clip_dim(self) -> int:
        return int(self._live()[0].proj.shape[1])

    @property
    def sync_dim(self) -> int:
        return int(self._live()[2].cfg.width)

    @torch.no_grad()
    def encode_clip(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, N, 3, 384, 384) in [0, 1] -> (B, N, clip_dim) float32, L2-normalised.

        Cast to the model dtype first, then the CLIP Normalize in that dtype (as the node does);
        all frames in one forward call.
        """
        clip = self._live()[0]
        b, n = frames.shape[:2]
        x = normalize_frames(frames.to(self.device, self.dtype)).flatten(0, 1)
        return encode_images(clip, x).float().view(b, n, -1)

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (text_f (B, 5+L, text_dim) in the model dtype with the supplementary tokens in
        front, mask (B, 5+L) bool); prompts are passed to the tokenizer unstripped."""
        _, t5, ts = self._live()
        hidden, mask = t5.encode(prompts)
        return ts.prepend_sup_text(hidden.to(self.dtype), mask)

    @torch.no_grad()
    def encode_sync(self, frames: torch.Tensor, text_f: torch.Tensor, text_mask: torch.Tensor,
                    *, segment_batch: int | None = None) -> torch.Tensor:
        """(B, Np >= 16, 3, 224, 224) in [0, 1] + prepended text -> (B, 8*S, sync_dim) float32.

        `(x - 0.5) / 0.5` in float32, then the model dtype; segments of 16 frames with stride 8
        (S = (Np - 16) // 8 + 1, trailing frames dropped); `segment_batch` segments per
        forward call (None: every segment of every clip at once).
        """
        ts = self._live()[2]
        b, n = frames.shape[:2]
        if n < SEGMENT:
            raise ValueError(f"encode_sync needs at least {SEGMENT} frames (pad first), got {n}")
        s = (n - SEGMENT) // STRIDE + 1
        x = ((frames.to(self.device, torch.float32) - 0.5) / 0.5).to(self.dtype)
        segs = torch.stack([x[:, i * STRIDE:i * STRIDE + SEGMENT] for i in range(s)], dim=1)
        segs = segs.flatten(0, 1).transpose(1, 2)  # (B*S, 3, 16, 224, 224)
        tf = text_f.to(self.device, self.dtype).repeat_interleave(s, dim=0)
        tm = text_mask.to(self.device).bool().repeat_interleave(s, dim=0)
        step = segs.shape[0] if not segment_batch or segment_batch <= 0 else segment_batch
        out = [ts(segs[i:i + step], tf[i:i + step], tm[i:i + step]).float()
               for i in range(0, segs.shape[0], step)]
        return torch.cat(out).view(b, s * 8, -1)

    def free(self) -> None:
        """Drop every weight (and the CUDA cache on a GPU); the object is unusable afterwards."""
        on_cuda = self.device.type == "cuda"
        self.clip = self.t5 = self.textsynch = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()


def _default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_video_encoders(selva_dir: Path | str, *, device: torch.device | str = "cpu",
                        dtype: torch.dtype | None = None, t5_dir: Path | None = None,
                        clip_dir: Path | None = None) -> VideoEncoders:
    """Load TextSynch, T5 and the CLIP image tower for `selva_dir` (bf16 on GPU, fp32 on CPU).

    `t5_dir` / `clip_dir` override where T5 and the open_clip files are found (default:
    the selva dir's `t5/` and `clip/`, then the Hugging Face cache).
    """
    selva_dir = Path(selva_dir)
    device = torch.device(device)
    dtype = dtype or _default_dtype(device)
    ts_path = selva_dir / FILE_NAME
    if not ts_path.is_file():
        raise FileNotFoundError(f"TextSynch weights not found: {ts_path}; download {FILE_NAME} from "
                                f"huggingface.co/jnwnlee/SelVA (weights/) into {selva_dir}")
    t5_dir = Path(t5_dir) if t5_dir else find_t5_dir(selva_dir)
    clip_dir = Path(clip_dir) if clip_dir else find_clip_dir(selva_dir)
    textsynch = load_textsynch(ts_path, device=device, dtype=dtype)
    t5 = T5Encoder(t5_dir, device=device, dtype=dtype)
    if t5.model.config.d_model != textsynch.cfg.text_dim:
        raise ValueError(f"T5 in {t5.directory} is {t5.model.config.d_model} wide but {ts_path} expects "
                         f"{textsynch.cfg.text_dim}: tiny and real weights are mixed; pass t5_dir= or "
                         f"rerun `selva-weights make-tiny {selva_dir}`")
    clip, clip_file = load_clip_vision(clip_dir, device=device, dtype=dtype)
    h = hashlib.sha256()
    for f in (clip_file, t5.weights_file(), ts_path):
        h.update(file_fingerprint(f).encode())
    return VideoEncoders(h.hexdigest()[:32], device, dtype, clip, t5, textsynch)
