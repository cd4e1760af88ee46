"""Audio VAE: golden, state-dict identity with the real checkpoints, loading errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from selva_engine.audio.vae import VAE, VaeLoadError, force_weight_norm_, load_vae
from selva_engine.conformance.runner import run_golden
from selva_engine.io import UnsafeFileError, atomic_torch_save


def test_vae_golden(golden_dir):
    result = run_golden(golden_dir / "vae_tiny.json")
    assert result.ok, result.line()
    names = {c.name for c in result.checks}
    assert "output.posterior_mean" in names and "output.decoded" in names
    assert any(n.startswith("effective.") for n in names)  # forced weight norm is checked


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_state_dict_matches_manifest(golden_dir, mode):
    manifest = json.loads((golden_dir / "manifests" / f"vae_{mode}.json").read_text())
    cfg = manifest["constructor_config"]
    with torch.device("meta"):
        vae = VAE(data_dim=cfg["data_dim"], embed_dim=cfg["embed_dim"], hidden_dim=cfg["hidden_dim"])
    sd = vae.state_dict()
    expected = [(e["key"], tuple(e["shape"])) for e in manifest["state_dict"]]
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == expected
    assert sum(p.numel() for p in vae.parameters()) == manifest["total_parameter_count"]
    assert sum(p.numel() for p in vae.encoder.parameters()) == manifest["encoder_numel"]


def _tiny_raw(data_dim: int = 80, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    vae = VAE(data_dim=data_dim, embed_dim=8, hidden_dim=16)
    return {k: torch.randn(v.shape, generator=gen) * (0.1 if v.dim() == 0 else 1.0)
            for k, v in vae.state_dict().items()}


def test_load_applies_forced_weight_norm_once(tmp_path):
    raw = _tiny_raw()
    raw["data_std"] = raw["data_std"].abs() + 0.5
    atomic_torch_save(tmp_path / "v1-16.pth", raw)
    vae = load_vae(tmp_path / "v1-16.pth", data_dim=80, embed_dim=8, hidden_dim=16)
    ref = VAE(data_dim=80, embed_dim=8, hidden_dim=16)
    ref.load_state_dict(raw)
    force_weight_norm_(ref)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(vae.state_dict()[k], v)
    w = vae.state_dict()["encoder.conv_in.weight"]  # each filter has norm 1 (within 1e-4 eps)
    torch.testing.assert_close(w.flatten(1).norm(dim=1), torch.ones(16), atol=1e-3, rtol=0)
    mel = torch.randn(1, 80, 12)
    mean, logvar, std = vae.encode(mel)
    assert mean.shape == (1, 8, 6) and vae.decode(mean).shape == (1, 80, 12)
    assert not any(p.requires_grad for p in vae.parameters())
    decode_only = load_vae(tmp_path / "v1-16.pth", data_dim=80, embed_dim=8, hidden_dim=16,
                           need_encoder=False)
    assert not hasattr(decode_only, "encoder")


def test_load_errors(tmp_path):
    dims = dict(data_dim=80, embed_dim=8, hidden_dim=16)
    with pytest.raises(FileNotFoundError):
        load_vae(tmp_path / "missing.pth", **dims)
    atomic_torch_save(tmp_path / "good.pth", _tiny_raw())
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "trunc.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeFileError, match="truncated"):
        load_vae(tmp_path / "trunc.pth", **dims)
    atomic_torch_save(tmp_path / "v1-44.pth", _tiny_raw(data_dim=128))
    with pytest.raises(VaeLoadError, match="data_mean"):
        load_vae(tmp_path / "v1-44.pth", **dims)  # the other mode's file
    with pytest.raises(VaeLoadError, match="embed_dim=20"):
        load_vae(tmp_path / "good.pth", data_dim=80, embed_dim=20, hidden_dim=384)
    payload = dict(_tiny_raw(), extra=argparse.Namespace(evil=True))
    torch.save(payload, tmp_path / "pickled.pth")
    with pytest.raises(UnsafeFileError, match="pickled"):
        load_vae(tmp_path / "pickled.pth", **dims)
