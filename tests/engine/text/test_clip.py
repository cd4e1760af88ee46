"""CLIP text encoder: per-token features, text tower only, offline, errors."""

from __future__ import annotations

import argparse
import json
import socket

import pytest
import torch
import torch.nn.functional as F

from selva_engine.io import UnsafeFileError
from selva_engine.text.clip import (
    CONFIG_FILE,
    WEIGHT_FILES,
    TextEncoder,
    TextEncoderError,
    _build_tower,
    write_tiny_text_encoder,
)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return write_tiny_text_encoder(tmp_path_factory.mktemp("clip"), width=64, seed=0)


def test_per_token_features(tiny_clip):
    enc = TextEncoder.from_dir(tiny_clip)
    feats = enc.encode(["a dog barking in the rain", ""])
    assert feats.shape == (2, 77, 64) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 77))
    tokens = enc.tokenize(["a dog barking in the rain", ""])
    assert tokens[0, 0] == 49406 and tokens[1, 1] == 49407 and tokens[1, 2] == 0


def test_matches_open_clip_text_path(tiny_clip):
    """Our tower is open_clip's: pooling our pre-normalisation states at EOT and projecting
    reproduces open_clip's own encode_text (causal mask, positions, ln_final, QuickGELU)."""
    from open_clip.model import CLIP

    cfg = json.loads((tiny_clip / CONFIG_FILE).read_text())["model_cfg"]
    clip = CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True).eval()
    clip.load_state_dict(torch.load(tiny_clip / WEIGHT_FILES[1], weights_only=True))
    enc = TextEncoder.from_dir(tiny_clip)
    tokens = enc.tokenize(["thunder and heavy rain", "a cat"])
    with torch.no_grad():
        ref = clip.encode_text(tokens, normalize=True)
        hidden = enc.hidden(tokens)
    pooled = hidden[torch.arange(2), tokens.argmax(dim=-1)] @ clip.text_projection
    torch.testing.assert_close(F.normalize(pooled, dim=-1), ref, atol=1e-5, rtol=1e-5)


def test_only_text_tower_in_memory(tiny_clip):
    enc = TextEncoder.from_dir(tiny_clip)
    names = [n for n, _ in enc.tower.named_parameters()]
    assert names and not any("visual" in n for n in names)
    assert enc.width == 64 and enc.context_length == 77


def test_real_architecture_on_meta():
    import open_clip

    cfg = open_clip.get_model_config("ViT-H-14-378-quickgelu")
    assert cfg["quick_gelu"] and cfg["text_cfg"]["width"] == 1024
    with torch.device("meta"):
        tower = _build_tower(cfg)
    sd = tower.state_dict()
    assert sd["token_embedding.weight"].shape == (49408, 1024)
    assert sd["positional_embedding"].shape == (77, 1024)
    assert sum(1 for k in sd if k.endswith("attn.in_proj_weight")) == 24


def test_identity_tracks_weights(tmp_path, tiny_clip):
    a = TextEncoder.from_dir(tiny_clip).identity
    assert a == TextEncoder.from_dir(tiny_clip).identity
    other = write_tiny_text_encoder(tmp_path / "other", width=64, seed=1)
    assert TextEncoder.from_dir(other).identity != a


def test_free_and_to(tiny_clip):
    enc = TextEncoder.from_dir(tiny_clip).to("cpu")
    enc.free()
    with pytest.raises(RuntimeError, match="freed"):
        enc.encode(["x"])


def test_no_network(tiny_clip, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    enc = TextEncoder.from_dir(tiny_clip)
    assert enc.encode(["offline please"]).shape == (1, 77, 64)


def test_errors(tmp_path, tiny_clip):
    with pytest.raises(FileNotFoundError, match=CONFIG_FILE):
        TextEncoder.from_dir(tmp_path)
    (tmp_path / CONFIG_FILE).write_text((tiny_clip / CONFIG_FILE).read_text())
    with pytest.raises(FileNotFoundError, match="open_clip_pytorch_model.bin"):
        TextEncoder.from_dir(tmp_path)
    narrow = write_tiny_text_encoder(tmp_path / "narrow", width=32, seed=0)
    (narrow / WEIGHT_FILES[1]).write_bytes((tiny_clip / WEIGHT_FILES[1]).read_bytes())
    with pytest.raises(TextEncoderError, match="does not fit"):
        TextEncoder.from_dir(narrow)  # 64-wide weights, 32-wide config
    sd = torch.load(tiny_clip / WEIGHT_FILES[1], weights_only=True)
    sd["extra"] = argparse.Namespace(evil=True)
    torch.save(sd, tmp_path / WEIGHT_FILES[1])
    with pytest.raises(UnsafeFileError, match="pickled"):
        TextEncoder.from_dir(tmp_path)
    data = (tiny_clip / WEIGHT_FILES[1]).read_bytes()
    (tmp_path / WEIGHT_FILES[1]).write_bytes(data[: len(data) // 3])
    with pytest.raises(UnsafeFileError, match="truncated"):
        TextEncoder.from_dir(tmp_path)
