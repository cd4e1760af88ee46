"""CLIP image tower (open_clip's VisionTransformer, DFN5B-CLIP-ViT-H-14-384), from the same
open_clip directory the text encoder uses (`open_clip_config.json` + weights, `visual.*` keys).
Only the image tower is built; the text tower's tensors are never kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selva_engine.io import hf_hub_dir, safe_torch_load
from selva_engine.text.clip import CONFIG_FILE, WEIGHT_FILES

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipVisionError", "build_tower", "encode_images", "find_clip_dir", "load_clip_vision", "normalize_frames"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipVisionError(ValueError):
    """An open_clip directory lacks the image tower or its weights do not fit the config."""


def build_tower(embed_dim: int, vision_cfg: dict, quick_gelu: bool = True) -> nn.Module:
    """open_clip's own VisionTransformer for this config (random init)."""
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(embed_dim, vision_cfg, quick_gelu=quick_gelu)


def normalize_frames(x: torch.Tensor) -> torch.Tensor:
    """CLIP Normalize on (..., 3, H, W) in x's own dtype (as torchvision does it)."""
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - mean) / std


CLIP_REPOS = ("apple/DFN5B-CLIP-ViT-H-14-384", "apple/DFN5B-CLIP-ViT-H-14-378")


def find_clip_dir(selva_dir: Path | str) -> Path:
    """The open_clip directory: `<selva_dir>/clip/`, then the DFN5B repos in the HF cache."""
    cands = [Path(selva_dir) / "clip"]
    for repo in CLIP_REPOS:
        snaps = hf_hub_dir() / f"models--{repo.replace('/', '--')}" / "snapshots"
        cands += sorted(snaps.iterdir()) if snaps.is_dir() else []
    for cand in cands:
        if (cand / CONFIG_FILE).is_file() and any((cand / w).is_file() for w in WEIGHT_FILES):
            return cand
    raise FileNotFoundError(
        f"CLIP (open_clip) files not found in {cands[0]} or the Hugging Face cache; fetch "
        f"https://huggingface.co/{CLIP_REPOS[0]} open_clip_config.json + open_clip_pytorch_model.bin")


def _visual_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {k[7:]: f.get_tensor(k) for k in f.keys() if k.startswith("visual.")}
    sd = safe_torch_load(path, what="CLIP weights")
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ClipVisionError(f"{path}: not a state dict")
    out = {k.removeprefix("module.")[7:]: v for k, v in sd.items()
           if k.removeprefix("module.").startswith("visual.")}
    del sd
    return out


def load_clip_vision(directory: Path | str, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.float32) -> tuple[nn.Module, Path]:
    """(image tower in eval mode, weights file) from an open_clip directory, offline."""
    directory = Path(directory)
    cfg_path = directory / CONFIG_FILE
    if not cfg_path.is_file():
        raise FileNotFoundError(f"CLIP config not found: {cfg_path}")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg = cfg.get("model_cfg", cfg)
    if "vision_cfg" not in cfg:
        raise ClipVisionError(f"{cfg_path}: no model_cfg.vision_cfg (not an open_clip config)")
    weights = next((directory / w for w in WEIGHT_FILES if (directory / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"CLIP weights not found in {directory} (looked for {', '.join(WEIGHT_FILES)})")
    with torch.device("meta"):
        tower = build_tower(cfg["embed_dim"], cfg["vision_cfg"], bool(cfg.get("quick_gelu", False)))
    expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
    sd = _visual_state_dict(weights)
    missing = sorted(set(expected) - set(sd))
    wrong = [k for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or wrong:
        raise ClipVisionError(f"{weights}: image tower does not fit {cfg_path}: missing {missing[:3]}, "
                              f"wrong shapes {wrong[:3]}; re-download the DFN5B open_clip files")
    tower.load_state_dict({k: sd[k].float() for k in expected}, strict=True, assign=True)
    return tower.requires_grad_(False).eval().to(device=device, dtype=dtype), weights


def encode_images(tower: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Normalised pixels (B, 3, H, W) -> L2-normalised embeddings (B, embed_dim)."""
    return F.normalize(tower(x), dim=-1)
