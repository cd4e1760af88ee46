"""Conformance functions for the node's pipeline: kinds "frame_select", "resize", "video_extractor".

`run_frame_select` and `run_resize` recompute the goldens' tables and tensors with
`selva_engine.video.frames`, reading every case (fps, frame count, duration widget, mask
lengths, sizes) from the golden's own arrays. `run_video_extractor` runs a whole e2e golden:
the stored video through our decoder, frame choice, resize, mask and the encoders built from
the tiny models the sidecar names (`models`: their weights files sit in the parent folder),
writes the node's file with `write_node_npz` and returns it (`node.<key>`, compared key by
key, dtype included, with the node's own file) plus the `debug.*` arrays we produce. For a
golden with `debug.bf16_cpu.*` arrays the same run in bfloat16 is compared by cosine.
The goldens state tolerances in their own words; `suggested_tolerance` turns them into the
runner's rules.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from selva_engine.conformance.video import build_clip_tower, build_t5, build_textsynch, token_grid
from selva_engine.video import frames as fr
from selva_engine.video.clip_vision import normalize_frames
from selva_engine.video.encoders import SEGMENT, VideoEncoders
from selva_engine.video.extractor import (
    PreparedFrames,
    extract_videos,
    prepare_frames,
    write_node_npz,
)
from selva_engine.video.t5 import T5Encoder

__all__ = ["encoder_debug", "find_video", "golden_encoders", "run_frame_select", "run_resize", "run_video_extractor",
           "suggested_tolerance"]

_EXACT = {"atol": 0.0, "rtol": 0.0}


def suggested_tolerance(sidecar: dict) -> dict:
    """The runner's tolerance rules for a video golden, from its `tolerance` block."""
    tol = sidecar.get("tolerance")
    kind = sidecar.get("kind")
    if kind == "frame_select":
        return {"all": _EXACT}
    if kind == "resize":
        return {"output.*.resized_*": tol["resized"], "output.*_normalized_crop32": tol["normalized"]}
    if kind != "video_extractor":
        return {}
    clip, sync = tol["clip_features"], tol["sync_features"]
    return {
        "output.clip_features / node.clip_features / debug.clip_embedding_unnormalized": clip,
        "output.sync_features / node.sync_features": sync,
        "debug.clip_indices / debug.sync_indices / node.duration / node.prompt / node.variant": _EXACT,
        "debug.t5.input_ids / debug.t5.attention_mask / debug.text_mask_prepended": _EXACT,
        "debug.*.crop16": tol["resized_crops"],
        "debug.*.channel_sums": tol["channel_sums"],
        "debug.t5.last_hidden_state / debug.text_f_prepended / debug.text_proj_out": sync,
        "debug.motionformer_tokens_seg0 / debug.cross_out_seg0": sync,
        "debug.bf16_cpu.clip_features": {"min_cosine": 0.999},
        "debug.bf16_cpu.sync_features": {"min_cosine": 0.999},
    }


def _labels(io: dict[str, np.ndarray], suffix: str) -> list[str]:
    return sorted({k[len("input."):-len(suffix)] for k in io if k.startswith("input.") and k.endswith(suffix)})


def run_frame_select(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Duration, CLIP/sync indices, padding, segments and mask indices for every case."""
    out: dict[str, np.ndarray] = {}
    for label in _labels(io, ".source_fps"):
        fps = float(io[f"input.{label}.source_fps"])
        plan = fr.plan_frames(int(io[f"input.{label}.num_frames"]), fps, float(io[f"input.{label}.duration_widget"]))
        o = f"output.{label}."
        out[o + "duration_resolved"] = np.array(plan.duration, dtype=np.float64)
        out[o + "clip_indices"] = plan.clip_indices
        out[o + "sync_indices"] = plan.sync_indices
        out[o + "sync_indices_padded"] = plan.sync_indices_padded
        out[o + "num_segments"] = np.array(plan.num_segments, dtype=np.int64)
        for key in io:
            m = re.fullmatch(re.escape(o) + r"mask_indices_(clip|sync)_M(\d+)", key)
            if m:
                n = len(plan.clip_indices if m[1] == "clip" else plan.sync_indices)
                target = fr.CLIP_FPS if m[1] == "clip" else fr.SYNC_FPS
                out[key] = fr.mask_indices(n, fps, target, int(m[2]))
    return out


def run_resize(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Bicubic resize + clamp to 384 and 224, and the normalised centre crops."""
    out: dict[str, np.ndarray] = {}
    for label in _labels(io, ".frames_u8"):
        x = torch.from_numpy(io[f"input.{label}.frames_u8"]).to(torch.float32) / 255.0
        big, small = fr.resize_frames(x, fr.CLIP_SIZE), fr.resize_frames(x, fr.SYNC_SIZE)
        out[f"output.{label}.resized_384"] = big.numpy()
        out[f"output.{label}.resized_224"] = small.numpy()
        out[f"output.{label}.clip_normalized_crop32"] = fr.clip_normalize(big)[..., 176:208, 176:208].numpy()
        out[f"output.{label}.sync_normalized_crop32"] = fr.sync_normalize(small)[..., 96:128, 96:128].numpy()
    return out


def find_video(sidecar: dict, golden_dir: Path) -> Path:
    """The golden's video: in its folder, else in a sibling folder (the mask runs reuse e2e_b's),
    checked against the sidecar's SHA-256."""
    name = sidecar["video_file"]
    want = sidecar.get("video", {}).get("sha256")
    for candidate in [golden_dir / name, *sorted(golden_dir.parent.glob(f"*/{name}"))]:
        if candidate.is_file() and (not want or hashlib.sha256(candidate.read_bytes()).hexdigest() == want):
            return candidate
    raise FileNotFoundError(f"video {name} of golden {golden_dir.name} not found beside it or in a sibling folder")


def _stats(out: dict[str, np.ndarray], label: str, x: torch.Tensor) -> None:
    """channel_sums (float64) and crop16 (rows s/2-8.., columns s/3..) of (N, 3, s, s)."""
    s = x.shape[-1]
    out[f"debug.{label}.channel_sums"] = x.double().sum(dim=(-1, -2)).numpy()
    out[f"debug.{label}.crop16"] = x[..., s // 2 - 8:s // 2 + 8, s // 3:s // 3 + 16].float().numpy()


def _frame_debug(p: PreparedFrames, masked: bool) -> dict[str, np.ndarray]:
    out = {"debug.clip_indices": p.plan.clip_indices, "debug.sync_indices": p.plan.sync_indices}
    _stats(out, "clip_resized", p.clip_resized)
    _stats(out, "sync_resized", p.sync_resized)
    if masked:
        _stats(out, "clip_masked", p.clip)
        _stats(out, "sync_masked", p.sync[:len(p.plan.sync_indices)])
    _stats(out, "clip_normalized", fr.clip_normalize(p.clip))
    _stats(out, "sync_input", fr.sync_normalize(p.sync))
    return out


def golden_encoders(models: dict, weights_dir: Path, dtype: torch.dtype) -> VideoEncoders:
    """Production `VideoEncoders` (CPU, `dtype`) over the tiny goldens the sidecar's `models`
    block names: the CLIP tower, T5 model and TextSynch built from their sidecars and
    `.weights.npz` in `weights_dir` (as the per-model goldens build them), the tokenizer folder."""
    def sidecar(name: str) -> dict:
        return json.loads((weights_dir / f"{name}.json").read_text())

    clip = build_clip_tower(sidecar(models["clip"]), weights_dir).to(dtype)
    t5 = T5Encoder.from_model(build_t5(sidecar(models["t5"]), weights_dir), weights_dir / models["tokenizer"],
                              dtype=dtype)
    textsynch = build_textsynch(sidecar(models["textsynch"]), weights_dir).to(dtype)
    identity = "golden:" + ",".join(str(models[k]) for k in ("clip", "t5", "tokenizer", "textsynch"))
    return VideoEncoders(identity, torch.device("cpu"), dtype, clip, t5, textsynch)


@torch.no_grad()
def encoder_debug(enc: VideoEncoders, prepared: PreparedFrames, prompt: str) -> dict[str, np.ndarray]:
    """The e2e goldens' encoder-internal `debug.*` arrays for one clip, from the production
    modules inside `enc`: T5 ids/mask/hidden state, the prepended text, the CLIP embeddings
    before L2 normalisation, and TextSynch's tokens / text projection / cross-attention output
    for segment 0 (frames 0-15)."""
    ids, mask = enc.t5.tokenize([prompt])
    hidden, _ = enc.t5.encode([prompt])
    tf, tm = enc.encode_text([prompt])
    clip_in = normalize_frames(prepared.clip.to(enc.device, enc.dtype))  # (N, 3, 384, 384)
    seg0 = ((prepared.sync[:SEGMENT].to(enc.device, torch.float32) - 0.5) / 0.5).to(enc.dtype)
    dbg: dict = {}
    enc.textsynch(seg0.transpose(0, 1).unsqueeze(0), tf, tm, debug=dbg)  # (1, 3, 16, 224, 224)
    return {"debug.t5.input_ids": ids.numpy(), "debug.t5.attention_mask": mask.numpy(),
            "debug.t5.last_hidden_state": hidden.float().numpy(), "debug.text_f_prepended": tf.float().numpy(),
            "debug.text_mask_prepended": tm.numpy(), "debug.text_proj_out": dbg["text_proj"].float().numpy(),
            "debug.clip_embedding_unnormalized": enc.clip(clip_in).float().numpy(),
            "debug.motionformer_tokens_seg0": token_grid(dbg["tokens"]).float().numpy(),
            "debug.cross_out_seg0": dbg["cross"].float().numpy()}


def _node_file(features, name: str, variant: str) -> dict[str, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_node_npz(features, Path(tmp), name, variant)
        with np.load(path, allow_pickle=False) as z:
            return {"node." + k: z[k] for k in z.files}


def run_video_extractor(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One e2e golden: decode + frames (+ debug arrays), encoders, the node's file."""
    mask = io.get("input.mask")
    strength = float(io["input.mask_strength"]) if mask is not None else 1.0
    opts = sidecar.get("mask") or {}
    prepared = prepare_frames(find_video(sidecar, golden_dir), duration=float(io["input.duration_widget"]),
                              mask=mask, mask_strength=strength, mask_clip=opts.get("mask_clip", True),
                              mask_sync=opts.get("mask_sync", True), keep_resized=True)
    out = _frame_debug(prepared, masked=mask is not None)
    prompt = str(io["input.prompt"])
    models = sidecar["models"]
    name = Path(sidecar["node_output_file"]).stem.rsplit("_", 1)[0]
    variant = str(sidecar.get("node_output_values", {}).get("variant", "small_16k"))
    enc = golden_encoders(models, golden_dir.parent, torch.float32)
    features = extract_videos([(prepared, prompt)], enc)[0]
    out["output.clip_features"] = features.clip_features
    out["output.sync_features"] = features.sync_features
    out.update(_node_file(features, name, variant))
    out.update(encoder_debug(enc, prepared, prompt))
    if "debug.bf16_cpu.clip_features" in io:
        bf16 = extract_videos([(prepared, prompt)], golden_encoders(models, golden_dir.parent, torch.bfloat16))[0]
        out["debug.bf16_cpu.clip_features"] = bf16.clip_features
        out["debug.bf16_cpu.sync_features"] = bf16.sync_features
    return out
