"""`selva-extract`: the SelVA Feature Extractor node's `.npz` for video files, without ComfyUI.

    selva-extract --video X.mp4 --prompt "a dog barking" --output DIR [--name N]
                  [--mask M.png|M.mp4 --mask_strength S] [--duration D]

writes `DIR/<name>_001.npz` (then `_002`, ...) exactly as the node does: `clip_features`
(1, N, 1024) and `sync_features` (1, 8S, 768) float32, `duration` float64, `prompt`, `variant`.
Several `--video` files share one prompt and are encoded in batched calls. The encoders come
from the ComfyUI `models/selva` directory (`--selva_dir`, default $SELVA_DIR) and the Hugging
Face cache (FLAN-T5) / open_clip checkpoint (CLIP), as `selva-weights check` lists them.
Exit status: 0 written, 2 bad input or missing weights (one sentence on stderr), 1 anything
else (the traceback on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path

import torch

from selva_engine.errors import DatasetError
from selva_engine.video.decode import node_differences, read_stream_info
from selva_engine.video.extractor import extract_videos, prepare_frames, write_node_npz

__all__ = ["build_parser", "main", "resolve_dtype"]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_parser() -> argparse.ArgumentParser:
    """The command line: the node's widgets (prompt, name, duration, mask, strength, paths)."""
    p = argparse.ArgumentParser(prog="selva-extract", description="Write the SelVA Feature Extractor's .npz for "
                                "video files (ComfyUI-SelVA's trainer reads them unchanged).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--video", required=True, nargs="+", type=Path, help="video file(s): .mp4 .mov .mkv .webm .avi")
    p.add_argument("--prompt", required=True, help="what the sound is (kept as typed, like the node)")
    p.add_argument("--output", required=True, type=Path, help="directory for the .npz files")
    p.add_argument("--name", default="", help="file name stem (default: the video's stem); one video only")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to encode; 0 = the whole video")
    p.add_argument("--start", type=float, default=0.0, help="seconds skipped at the start (0 = as the node)")
    p.add_argument("--mask", type=Path, default=None, help="mask: an image (static) or a video (per frame)")
    p.add_argument("--mask_strength", type=float, default=1.0, help="1 = background fully grey, 0 = no mask")
    p.add_argument("--no_mask_clip", action="store_true", help="do not mask the CLIP frames")
    p.add_argument("--no_mask_sync", action="store_true", help="do not mask the sync frames")
    p.add_argument("--variant", default="large_44k", help="the model variant written into the file")
    p.add_argument("--selva_dir", type=Path, default=os.environ.get("SELVA_DIR", ""),
                   help="ComfyUI models/selva directory (video_enc_sup_5.pth); from $SELVA_DIR")
    p.add_argument("--t5_dir", type=Path, default=None, help="FLAN-T5-base directory (default: the HF cache)")
    p.add_argument("--clip_dir", type=Path, default=None, help="DFN5B CLIP checkpoint directory")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                   help="auto = bf16 on a GPU (the node's default), fp32 on the CPU")
    p.add_argument("--segment_batch", type=int, default=None, help="sync segments per forward call (default all)")
    return p


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The model dtype: bf16 on a GPU and fp32 on the CPU for "auto", else the named one."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[name]


def _check(args: argparse.Namespace) -> None:
    if args.name and len(args.video) > 1:
        raise ValueError("--name names one file; give one --video with it, or leave --name out to use the stems")
    if not 0.0 <= args.mask_strength <= 1.0:
        raise ValueError(f"--mask_strength must be between 0 and 1 (got {args.mask_strength})")
    for path in [*args.video, *([args.mask] if args.mask else [])]:
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist or is not a file; check the path")


def _run(args: argparse.Namespace) -> list[Path]:
    from selva_engine.device import resolve_device

    _check(args)
    device = resolve_device(args.device)
    prepared = [prepare_frames(v, duration=args.duration, start=args.start, mask=args.mask,
                               mask_strength=args.mask_strength, mask_clip=not args.no_mask_clip,
                               mask_sync=not args.no_mask_sync) for v in args.video]
    for video in args.video:
        for note in node_differences(read_stream_info(video)):
            print(f"selva-extract: warning: {note}", file=sys.stderr)
    # the encoders load only once the inputs are known to be good
    from selva_engine.video import encoders as video_encoders

    encoders = video_encoders.load_video_encoders(args.selva_dir, device=device, dtype=resolve_dtype(args.dtype, device),
                                   t5_dir=args.t5_dir, clip_dir=args.clip_dir)
    try:
        features = extract_videos([(p, args.prompt) for p in prepared], encoders, segment_batch=args.segment_batch)
    finally:
        encoders.free()
    written = []
    for video, feat in zip(args.video, features, strict=True):
        path = write_node_npz(feat, args.output, args.name or video.stem, args.variant)
        written.append(path)
        print(f"wrote {path}: {feat.clip_features.shape[1]} CLIP frames, {feat.sync_features.shape[1]} sync rows, "
              f"{feat.duration:.3f} s at {feat.fps:.3f} fps", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of `selva-extract` and `python -m selva_engine.cli extract-video`; the exit status."""
    args = build_parser().parse_args(argv)
    try:
        _run(args)
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"selva-extract: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the run boundary: one line, then the traceback
        traceback.print_exc(file=sys.stderr)
        print(f"selva-extract: error: {type(exc).__name__}: {json.dumps(str(exc))[1:-1]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
