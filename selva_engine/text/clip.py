"""CLIP text encoder (open_clip DFN5B-CLIP-ViT-H-14-384): prompts -> per-token features (B, 77, D).

This is the text stream the SelVA/MMAudio generator was trained on: token embedding +
positional embedding -> causal text transformer -> ln_final -> each token vector
L2-normalised. No EOT pooling and no text projection (the reference patches open_clip's
`encode_text` the same way). Only the text tower is built: the checkpoint's `visual.*`
tensors are dropped as soon as the file is read (and never read at all from a
`.safetensors` file).

Weights come from a local directory holding `open_clip_config.json` plus
`open_clip_model.safetensors` or `open_clip_pytorch_model.bin` (the Hugging Face repository
layout); `selva_engine.weights.locate` finds that directory. Nothing is ever downloaded: the BPE
tokenizer ships inside open_clip.
"""

from __future__ import annotations

import gc
import hashlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from selva_engine.io import atomic_torch_save, atomic_write_json, file_fingerprint, safe_torch_load

__all__ = [
    "CONFIG_FILE",
    "TOKENIZER_NAME",
    "WEIGHT_FILES",
    "TextEncoder",
    "TextEncoderError",
    "write_tiny_text_encoder",
]

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
TOKENIZER_NAME = "ViT-H-14-378-quickgelu"  # same BPE tokenizer as every OpenAI-style CLIP


class TextEncoderError(ValueError):
    """A text-encoder directory is incomplete or its files do not fit together."""


def _read_model_cfg(directory: Path) -> tuple[dict, str]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"CLIP config not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        cfg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TextEncoderError(f"{path}: not valid JSON ({exc})") from None
    model_cfg = cfg.get("model_cfg", cfg)
    if "text_cfg" not in model_cfg:
        raise TextEncoderError(f"{path}: no model_cfg.text_cfg (not an open_clip config)")
    if model_cfg["text_cfg"].get("hf_model_name"):
        raise TextEncoderError(f"{path}: Hugging Face text towers are not supported here")
    return model_cfg, text


def _weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(f"CLIP weights not found in {directory} (looked for {', '.join(WEIGHT_FILES)})")


def _text_state_dict(path: Path, wanted: set[str]) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open  # pickle-free; reads only the requested tensors

        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k in wanted}
    sd = safe_torch_load(path, what="CLIP weights")
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise TextEncoderError(f"{path}: not a state dict")
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    out = {k: v for k, v in sd.items() if k in wanted}
    del sd  # drops the visual tower right away
    return out


def _build_tower(model_cfg: dict) -> nn.Module:
    from open_clip.model import _build_text_tower  # open_clip's own CLIP text tower builder

    return _build_text_tower(
        model_cfg.get("embed_dim", model_cfg["text_cfg"]["width"]),
        model_cfg["text_cfg"],
        quick_gelu=bool(model_cfg.get("quick_gelu", False)),
    )


class TextEncoder:
    """Per-token CLIP text features for prompts: `encode(list[str]) -> (B, 77, width)` fp32.

    Build with `TextEncoder.from_dir(directory)`. `identity` (hex) changes whenever the
    weights or the config change and is meant as a cache key for extracted features.
    `free()` releases the weights; the object is unusable afterwards.
    """

    def __init__(self, tower: nn.Module, *, identity: str, source: Path, context_length: int):
        self.tower: nn.Module | None = tower
        self.identity = identity
        self.source = source
        self.context_length = context_length
        import open_clip

        self.tokenizer = open_clip.get_tokenizer(TOKENIZER_NAME, context_length=context_length)

    @classmethod
    def from_dir(cls, directory: Path | str, *, device: torch.device | str = "cpu") -> TextEncoder:
        """Load the text tower from an open_clip directory (config + weights), offline.

        Raises FileNotFoundError when a file is missing and TextEncoderError when the
        weights do not fit the config. The tower is built on the meta device and receives
        the loaded tensors directly, so no random initialisation is paid for.
        """
        directory = Path(directory)
        model_cfg, cfg_text = _read_model_cfg(directory)
        weights = _weights_file(directory)
        with torch.device("meta"):
            tower = _build_tower(model_cfg)
        expected = {k: tuple(v.shape) for k, v in tower.state_dict().items()}
        sd = _text_state_dict(weights, set(expected))
        missing = sorted(set(expected) - set(sd))
        wrong = [f"{k}: {tuple(sd[k].shape)} != {expected[k]}" for k in expected
                 if k in sd and tuple(sd[k].shape) != expected[k]]
        if missing or wrong:
            raise TextEncoderError(
                f"{weights}: does not fit {directory / CONFIG_FILE}: "
                f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}; shapes {wrong[:4]}"
            )
        tower.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
        if getattr(tower, "attn_mask", None) is not None:  # non-persistent, was built on meta
            tower.attn_mask = tower.build_causal_mask()
        tower.requires_grad_(False)
        tower.eval().to(device)
        h = hashlib.sha256(cfg_text.encode())
        h.update(file_fingerprint(weights).encode())
        ctx = int(model_cfg["text_cfg"].get("context_length", 77))
        return cls(tower, identity=h.hexdigest()[:32], source=weights, context_length=ctx)

    def _tower(self) -> nn.Module:
        if self.tower is None:
            raise RuntimeError("text encoder was freed")
        return self.tower

    @property
    def device(self) -> torch.device:
        return self._tower().token_embedding.weight.device

    @property
    def width(self) -> int:
        """Feature width D (1024 for DFN5B ViT-H-14)."""
        return int(self._tower().token_embedding.weight.shape[1])

    def to(self, device: torch.device | str) -> TextEncoder:
        """Move the tower to `device` (in place); returns self."""
        self.tower = self._tower().to(device)
        return self

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, context_length) int64: start 49406, text, end 49407, zero padding."""
        return self.tokenizer(list(prompts))

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """ln_final output (B, L, D) for token ids (B, L), before per-token normalisation."""
        t = self._tower()
        x = t.token_embedding(tokens.to(self.device)) + t.positional_embedding
        x = t.transformer(x, attn_mask=t.attn_mask)
        return t.ln_final(x)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Per-token, L2-normalised features (B, 77, D), float32, on the encoder's device."""
        if isinstance(prompts, str):
            raise TypeError("encode() takes a list of prompts, not a single string")
        return F.normalize(self.hidden(self.tokenize(prompts)).float(), dim=-1)

    def free(self) -> None:
        """Drop the weights (and the CUDA cache when on a GPU)."""
        on_cuda = self.tower is not None and self.device.type == "cuda"
        self.tower = None
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()


TINY_VISION_CFG = {"image_size": 28, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14}


def tiny_model_cfg(width: int = 64, layers: int = 2, heads: int = 2, *,
                   embed_dim: int | None = None, vision_cfg: dict | None = None) -> dict:
    """open_clip model config of a tiny CLIP (real tokenizer, 77 tokens, tiny towers)."""
    return {
        "embed_dim": embed_dim or width,
        "quick_gelu": True,
        "vision_cfg": dict(vision_cfg or TINY_VISION_CFG),
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width,
                     "heads": heads, "layers": layers},
    }


def write_tiny_text_encoder(
    directory: Path | str, *, width: int = 64, layers: int = 2, heads: int = 2, seed: int = 0,
    embed_dim: int | None = None, vision_cfg: dict | None = None,
) -> Path:
    """Write a complete tiny open_clip model (config + `open_clip_pytorch_model.bin`).

    Same layout and architecture class as DFN5B-CLIP-ViT-H-14-384 (QuickGELU, causal text
    transformer, 49408-token vocab, context 77), with a small text tower of `width` and a
    token-sized vision tower (or `vision_cfg` with output width `embed_dim`, for a usable
    image tower). Deterministic for `seed`; the global RNG is left untouched.
    Returns the directory.
    """
    from open_clip.model import CLIP

    directory = Path(directory)
    cfg = tiny_model_cfg(width, layers, heads, embed_dim=embed_dim, vision_cfg=vision_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True)
    atomic_write_json(directory / CONFIG_FILE, {
        "model_cfg": cfg,
        "preprocess_cfg": {"mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0],
                           "interpolation": "bicubic", "resize_mode": "squash"},
    })
    atomic_torch_save(directory / WEIGHT_FILES[1], model.state_dict())
    return directory
