"""Weight discovery, size/md5 checks, make-tiny and the selva-weights command."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from selva_engine.io import safe_torch_load
from selva_engine.model.variants import get_variant
from selva_engine.text.clip import TextEncoder
from selva_engine.weights import locate as W
from selva_engine.weights.cli import main as weights_main
from selva_engine.weights.tiny import make_tiny


@pytest.fixture(scope="module")
def tiny16(tmp_path_factory):
    root = tmp_path_factory.mktemp("selva")
    return make_tiny(root, "tiny_16k", seed=0)


def test_make_tiny_layout_and_resolve(tiny16):
    root = tiny16.selva_dir
    assert tiny16.generator == root / "generator_tiny_16k_sup_5.pth"
    assert tiny16.vae == root / "ext" / "v1-16.pth"
    assert tiny16.vocoder == root / "ext" / "best_netG.pt" and tiny16.vocoder_kind == "bigvgan_v1"
    assert tiny16.text_encoder == root / "clip"
    assert tiny16.video_encoder == root / "video_enc_sup_5.pth"  # tiny video encoders too
    assert (root / "clip" / "open_clip_config.json").is_file()
    assert (root / "t5" / "config.json").is_file() and (root / "t5" / "tokenizer.json").is_file()
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total < 90e6
    assert W.resolve(root, "tiny_16k") == tiny16


def test_tiny_generator_checkpoint(tiny16):
    from selva_engine.model.generator import Generator

    sd = safe_torch_load(tiny16.generator)
    v = get_variant("tiny_16k")
    gen = Generator(**v.generator_kwargs())
    gen.load_state_dict(sd, strict=True)  # flat state dict with exactly the model's keys
    assert torch.isfinite(torch.stack([t.float().abs().max() for t in sd.values()])).all()
    assert (sd["latent_std"] > 0).all() and sd["latent_mean"].abs().max() < 1
    empty = TextEncoder.from_dir(tiny16.text_encoder).encode([""])[0]
    torch.testing.assert_close(sd["empty_string_feat"], empty)
    vae_sd = safe_torch_load(tiny16.vae)
    assert vae_sd["data_mean"].shape == (1, 80, 1) and (vae_sd["data_std"] > 0).all()
    best = safe_torch_load(tiny16.vocoder)
    assert set(best) >= {"generator"} and any(k.endswith("original0") for k in best["generator"])


def test_make_tiny_deterministic(tmp_path, tiny16):
    again = make_tiny(tmp_path / "a", "tiny_16k", seed=0)
    other = make_tiny(tmp_path / "b", "tiny_16k", seed=1)
    ref = safe_torch_load(tiny16.generator)
    same, diff = safe_torch_load(again.generator), safe_torch_load(other.generator)
    assert all(torch.equal(ref[k], same[k]) for k in ref)
    assert not torch.equal(ref["joint_blocks.0.latent_block.attn.qkv.weight"],
                           diff["joint_blocks.0.latent_block.attn.qkv.weight"])
    with pytest.raises(ValueError, match="tiny"):
        make_tiny(tmp_path / "c", "small_16k")


def test_missing_weights_error_names_places_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(W.MissingWeightsError) as info:
        W.resolve(tmp_path / "empty", "small_16k")
    text = str(info.value)
    assert "generator_small_16k_sup_5.pth" in text and "v1-16.pth" in text
    assert str(tmp_path / "hub" / "models--jnwnlee--SelVA") in text  # HF cache was searched
    assert "models--apple--DFN5B-CLIP-ViT-H-14-384" in text
    assert "huggingface.co/jnwnlee/SelVA" in text
    with pytest.raises(W.MissingWeightsError, match="make-tiny"):
        W.resolve(tmp_path / "empty", "tiny_44k")


def test_tiny_never_looks_in_hf_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    checks = W.check_variant(tmp_path, "tiny_44k")
    assert all("hub" not in str(p) for c in checks for p in c.looked_in)


def test_hf_cache_location_and_snapshot_order(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert W.hf_hub_dir() == tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert W.hf_hub_dir() == tmp_path / "cache"
    repo = tmp_path / "cache" / "models--nvidia--bigvgan_v2_44khz_128band_512x"
    for rev in ("aaa", "zzz"):
        (repo / "snapshots" / rev).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("zzz\n")
    assert W._snapshots("nvidia/bigvgan_v2_44khz_128band_512x")[0].name == "zzz"


def test_wrong_size_and_wrong_variant(tmp_path, tiny16, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    root = tmp_path / "copy"
    shutil.copytree(tiny16.selva_dir, root)
    data = (root / "ext" / "v1-16.pth").read_bytes()
    (root / "ext" / "v1-16.pth").write_bytes(data[: len(data) // 2])
    checks = {c.role: c for c in W.check_variant(root, "tiny_16k")}
    assert checks["vae"].status == "wrong_size" and checks["generator"].status == "ok"
    with pytest.raises(W.MissingWeightsError, match="wrong size"):
        W.resolve(root, "tiny_16k")
    shutil.copy(tiny16.generator, root / "generator_small_16k_sup_5.pth")  # tiny file, real name
    checks = {c.role: c for c in W.check_variant(root, "small_16k")}
    assert checks["generator"].status == "wrong_size"
    assert checks["text_encoder"].status == "mismatch"  # 64-wide tiny CLIP for a 1024 variant
    checks = {c.role: c for c in W.check_variant(root, "tiny_44k")}
    assert checks["vae"].status == "missing" and checks["vocoder"].status == "missing"


def test_md5_only_on_request(tmp_path, monkeypatch):
    root = tmp_path / "real"
    (root / "ext").mkdir(parents=True)
    (root / "clip").mkdir()
    for name in ("generator_small_16k_sup_5.pth", "ext/v1-16.pth", "ext/best_netG.pt",
                 "clip/open_clip_pytorch_model.bin"):
        (root / name).write_bytes(b"not really weights")
    (root / "clip" / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": {"text_cfg": {"width": 1024}}}))
    monkeypatch.setattr(W, "_expected", lambda *a: None)  # skip size sanity for this test
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert W.check_variant(root, "small_16k")[2].status == "ok"
    assert W.check_variant(root, "small_16k", md5=True)[2].status == "wrong_md5"
    good = W._md5(root / "ext" / "best_netG.pt")
    monkeypatch.setitem(W.MD5, "best_netG.pt", good)
    assert W.check_variant(root, "small_16k", md5=True)[2].status == "ok"


def test_cli_check_and_make_tiny(tmp_path, tiny16, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert weights_main(["check", str(tiny16.selva_dir), "--variant", "tiny_16k"]) == 0
    assert "tiny_16k: OK" in capsys.readouterr().out
    assert weights_main(["check", str(tiny16.selva_dir), "--variant", "tiny_44k"]) == 1
    assert weights_main(["check", str(tmp_path / "none")]) == 1  # no real variant can run
    out = capsys.readouterr().out
    assert "CANNOT RUN" in out and "fix:" in out
    assert weights_main(["make-tiny", str(tmp_path / "t44"), "--variant", "tiny_44k", "--seed", "3"]) == 0
    assert weights_main(["check", str(tmp_path / "t44"), "--variant", "tiny_44k"]) == 0
    capsys.readouterr()
    assert weights_main(["check", str(tmp_path / "t44")]) == 0  # no real variant, a tiny one
    assert capsys.readouterr().out.splitlines()[-1] == (
        "can run: none of the real variants; tiny variants can run: tiny_44k (random test "
        "weights, for the demo)")  # ...says so
    assert weights_main(["make-tiny", str(tmp_path / "all"), "--variant", "all"]) == 0
    assert weights_main(["check", str(tmp_path / "all"), "--variant", "tiny_16k", "--variant",
                         "tiny_44k"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "can run: tiny_16k, tiny_44k"
    v2 = tmp_path / "t44" / "ext" / W.V2_DIR
    assert json.loads((v2 / "config.json").read_text())["use_tanh_at_final"] is False
