"""Benchmark: video feature extraction, ours against a faithful copy of the ComfyUI node's path.

Both paths use the same encoders (`selva_engine.video.encoders.VideoEncoders`: same model code,
same weights, same dtype) on the same synthetic videos (made here with PyAV) and the same
prompts. They differ where the node and we differ:

- node (ComfyUI-SelVA branch feature/lora-timestep-sampling, commit 40d29bc,
  nodes/selva_feature_extractor.py lines 210-248 with VHS Load Video before it): VHS decodes
  every frame of the file to float32 (T, H, W, 3) first; frames are sampled from that tensor
  and resized per path; CLIP encodes all of a clip's frames in one call
  (selva_core/model/utils/features_utils.py lines 96-111, batch_size -1); T5 encodes the one
  prompt of the clip (lines 146-165); TextSynch runs one forward call of batch 1 per 16-frame
  segment (selva_core/model/networks_video_enc.py lines 76-112, sync_batch_size_multiplier -1
  with one clip). One clip at a time.
- ours (`selva_engine.video.extractor`): only the sampled frames are decoded (seeking where
  it pays), each resized as it is decoded; clips are encoded `--batch` at a time: one CLIP
  call for all their frames, one T5 call for all their prompts, TextSynch with all segments
  of all clips in one call (or `--segment_batch` per call).

Each path runs in its own child process (so peak host memory is its own): it prints clips/s,
ms per clip by stage (decode, CLIP, T5, TextSynch) and peak memory (host RSS high-water mark
and its growth over the loaded models; CUDA peak allocated). The last line is
`speedup: X.XX` (ours clips/s over the node's).

    python bench/extract_throughput.py [--device cpu] [--clips 4] [--seconds 8] [--duration 8]
        [--width 640 --height 360] [--rate 30000/1001] [--batch 4] [--selva_dir DIR] [--dtype auto]

Without `--selva_dir` the tiny encoders of `selva-weights make-tiny` are written to a temporary
directory (the demo's and the tests' models).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from selva_engine.video import frames as fr  # noqa: E402
from selva_engine.video.decode import decode_frames, read_stream_info  # noqa: E402
from selva_engine.video.extractor import extract_videos, prepare_frames  # noqa: E402

PROMPTS = ("a dog barking in the distance", "rain falling on a tin roof, with thunder",
           "footsteps on gravel", "engine revving 3000 rpm")


def make_video(path: Path, *, seconds: float, width: int, height: int, rate: str, seed: int) -> Path:
    """A synthetic H.264 video: a moving gradient with a moving box (yuv420p, GOP 2 s)."""
    import av

    rng = np.random.default_rng(seed)
    fps = Fraction(rate)
    n = int(round(seconds * float(fps)))
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     np.full_like(x, int(rng.integers(0, 255)))], -1).astype(np.int32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(1, int(2 * float(fps)))
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for i in range(n):
            img = ((base + 3 * i) % 256).astype(np.uint8)
            bx = (7 * i) % max(width - 32, 1)
            img[height // 3:height // 3 + 32, bx:bx + 32] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


class Timed:
    """The encoders with each call timed into `stages` (seconds; CUDA synchronised)."""

    def __init__(self, enc, stages: dict[str, float]) -> None:
        self.enc, self.stages = enc, stages

    def _time(self, stage: str, fn, *args, **kw):
        sync = self.enc.device.type == "cuda"
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn(*args, **kw)
        if sync:
            torch.cuda.synchronize()
        self.stages[stage] += time.perf_counter() - t
        return out

    def encode_clip(self, frames):
        return self._time("CLIP", self.enc.encode_clip, frames)

    def encode_text(self, prompts):
        return self._time("T5", self.enc.encode_text, prompts)

    def encode_sync(self, frames, text_f, text_mask, *, segment_batch=None):
        return self._time("TextSynch", self.enc.encode_sync, frames, text_f, text_mask, segment_batch=segment_batch)


def node_resize(frames: torch.Tensor, size: int) -> torch.Tensor:
    """The node's `_resize_frames` (nodes/selva_feature_extractor.py lines 31-35): bicubic on the
    permuted (N, C, H, W) view of (N, H, W, C), then clamp."""
    x = frames.permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bicubic", align_corners=False)
    return x.clamp(0.0, 1.0)


def node_clip(video: Path, prompt: str, enc: Timed, duration: float, stages: dict[str, float]) -> np.ndarray:
    """One clip the node's way: whole-video decode, sample, resize, one call per segment."""
    t = time.perf_counter()
    info = read_stream_info(video)
    frames = torch.from_numpy(decode_frames(video))  # VHS: every frame, float32 (T, H, W, 3)
    plan = fr.plan_frames(frames.shape[0], info.fps, duration)
    clip = node_resize(frames[torch.from_numpy(plan.clip_indices)], fr.CLIP_SIZE)
    sync = fr.pad_sync(node_resize(frames[torch.from_numpy(plan.sync_indices)], fr.SYNC_SIZE))
    del frames
    stages["decode"] += time.perf_counter() - t
    with torch.inference_mode():
        clip_f = enc.encode_clip(clip.unsqueeze(0))
        text_f, text_mask = enc.encode_text([prompt])
        sync_f = enc.encode_sync(sync.unsqueeze(0), text_f, text_mask, segment_batch=1)
    return np.concatenate([clip_f.float().cpu().numpy().ravel(), sync_f.float().cpu().numpy().ravel()])


def ours_clips(videos: list[Path], prompts: list[str], enc: Timed, duration: float, stages: dict[str, float],
               segment_batch: int | None) -> list[np.ndarray]:
    """A batch of clips our way: streamed decode of the sampled frames, batched encoder calls."""
    t = time.perf_counter()
    prepared = [prepare_frames(v, duration=duration) for v in videos]
    stages["decode"] += time.perf_counter() - t
    feats = extract_videos(list(zip(prepared, prompts, strict=True)), enc, segment_batch=segment_batch)
    return [np.concatenate([f.clip_features.ravel(), f.sync_features.ravel()]) for f in feats]


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> dict:
    """Run one path over the clips; return its figures (and a checksum of its features)."""
    from selva_engine.video import encoders as video_encoders
    from selva_engine.video.cli import resolve_dtype

    device = torch.device(args.device)
    enc = video_encoders.load_video_encoders(args.selva_dir, device=device, dtype=resolve_dtype(args.dtype, device))
    videos = sorted(Path(args.videos).glob("*.mp4"))
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(videos))]
    stages: dict[str, float] = defaultdict(float)
    timed = Timed(enc, stages)

    def run_all() -> list[np.ndarray]:
        if args.path == "node":
            return [node_clip(v, p, timed, args.duration, stages) for v, p in zip(videos, prompts, strict=True)]
        out = []
        for i in range(0, len(videos), args.batch):
            out += ours_clips(videos[i:i + args.batch], prompts[i:i + args.batch], timed, args.duration, stages,
                              args.segment_batch)
        return out

    run_all()  # warm-up: kernels, allocator, file cache
    stages.clear()
    base_rss = _rss_mib()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    feats = []
    for _ in range(args.rounds):
        feats = run_all()
    elapsed = (time.perf_counter() - t) / args.rounds
    n = len(videos)
    return {"path": args.path, "clips": n, "clips_per_s": n / elapsed,
            "ms_per_clip": {k: 1000 * v / args.rounds / n for k, v in stages.items()},
            "peak_rss_mib": _rss_mib(), "rss_growth_mib": _rss_mib() - base_rss,
            "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None,
            "features": [f.tolist()[:64] for f in feats], "feature_sums": [float(f.sum()) for f in feats]}


def _row(r: dict) -> str:
    stages = "  ".join(f"{k} {r['ms_per_clip'].get(k, 0.0):8.1f}" for k in ("decode", "CLIP", "T5", "TextSynch"))
    cuda = f"  CUDA peak {r['cuda_peak_mib']:.0f} MiB" if r["cuda_peak_mib"] is not None else ""
    return (f"{r['path']:5s} {r['clips_per_s']:8.3f} clips/s   ms/clip: {stages}   peak RSS {r['peak_rss_mib']:.0f} MiB "
            f"(+{r['rss_growth_mib']:.0f} over the loaded models){cuda}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0, help="length of each synthetic video")
    p.add_argument("--duration", type=float, default=8.0, help="seconds encoded per clip (0 = all)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--rate", default="30000/1001")
    p.add_argument("--batch", type=int, default=4, help="clips per batched call (ours)")
    p.add_argument("--segment_batch", type=int, default=None, help="TextSynch segments per call (ours)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--selva_dir", default="", help="weights (default: the tiny ones, made in a temp dir)")
    p.add_argument("--path", choices=["node", "ours"], help=argparse.SUPPRESS)
    p.add_argument("--videos", help=argparse.SUPPRESS)
    return p


def main() -> int:
    args = _parser().parse_args()
    if args.path:
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        if not args.selva_dir:
            from selva_engine.weights.tiny import make_tiny

            make_tiny(tmp_path / "weights", "tiny_16k", seed=0)
            args.selva_dir = str(tmp_path / "weights")
        videos = tmp_path / "videos"
        videos.mkdir()
        for i in range(args.clips):
            make_video(videos / f"clip{i:03d}.mp4", seconds=args.seconds, width=args.width, height=args.height,
                       rate=args.rate, seed=i)
        info = read_stream_info(videos / "clip000.mp4")
        print(f"{args.clips} videos {args.width}x{args.height} {info.fps:.3f} fps {args.seconds:g} s, "
              f"{args.duration:g} s encoded each; device {args.device}, dtype {args.dtype}, batch {args.batch}")
        results = {}
        for path in ("node", "ours"):
            cmd = [sys.executable, __file__, *sys.argv[1:], "--path", path, "--videos", str(videos),
                   "--selva_dir", args.selva_dir]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            results[path] = json.loads(out.stdout.strip().splitlines()[-1])
            print(_row(results[path]))
    node, ours = results["node"], results["ours"]
    diff = max(abs(a - b) for a, b in zip(node["feature_sums"], ours["feature_sums"], strict=True))
    print(f"same features: max |sum difference| {diff:.3g} over {ours['clips']} clips")
    print(f"speedup: {ours['clips_per_s'] / node['clips_per_s']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
