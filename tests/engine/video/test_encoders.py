"""Video encoders against the shared video goldens (tiny ones by default, full-size ones slow)
and the tiny weights `make-tiny` writes, loaded through the same code as real weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selva_engine.conformance.runner import run_golden
from selva_engine.conformance.video import rule_tensor, tolerances
from selva_engine.video.textsynch import TextSynchError, load_textsynch


@pytest.fixture(scope="session")
def video_golden_dir(golden_dir: Path) -> Path:
    path = golden_dir / "video"
    if not path.is_dir():
        pytest.skip(f"video goldens {path} do not exist")
    return path


def _passes(sidecar: Path) -> None:
    result = run_golden(sidecar)
    assert result.ok, result.line() + "".join(f"\n  {c.name} {c.max_abs} {c.ratio}" for c in result.checks)


@pytest.mark.parametrize("name", ["t5_tokenizer_tiny", "t5_tiny", "clip_vision_tiny", "textsynch_tiny"])
def test_tiny_goldens(video_golden_dir: Path, name: str) -> None:
    _passes(video_golden_dir / f"{name}.json")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["t5_base_full", "clip_vision_full", "textsynch_full"])
def test_full_size_goldens(video_golden_dir: Path, name: str) -> None:
    _passes(video_golden_dir / f"{name}.json")


def test_textsynch_keys_match_real_manifest(video_golden_dir: Path) -> None:
    """Every key and shape of video_enc_sup_5.pth (depth1) loads into our TextSynch, nothing else."""
    manifest = json.loads((video_golden_dir / "manifests" / "textsynch_depth1.json").read_text())
    shapes = {e["key"]: tuple(e["shape"]) for e in manifest["state_dict"]}
    with torch.device("meta"):
        sd = {k: torch.empty(s) for k, s in shapes.items()}
    from selva_engine.video.textsynch import TextSynch, config_from_state_dict

    cfg = config_from_state_dict(sd)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch, cfg.text_dim) == (768, 12, 12, 16, 768)
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in TextSynch(cfg).state_dict().items()}
    assert ours == shapes


def test_rule_tensor_is_the_readme_rule() -> None:
    w = rule_tensor("a.weight", (4, 9))
    assert w.dtype == np.float32 and abs(float(w.std()) - 1 / 3) < 0.2
    assert np.allclose(rule_tensor("n.weight", (1000,)).mean(), 1.0, atol=0.02)
    assert np.array_equal(rule_tensor("b.bias", (3,)), rule_tensor("b.bias", (3,)))


def test_tolerance_rules_named_beat_catch_all() -> None:
    from selva_engine.conformance.runner import tolerance_for

    rules = tolerances({"tolerance": {"last_hidden_state": {"atol": 5e-5, "rtol": 1e-4},
                                      "debug": {"atol": 1e-4, "rtol": 0}}})
    assert tolerance_for("output.single.3.last_hidden_state", rules) == (5e-5, 1e-4)
    assert tolerance_for("debug.cross_out", rules) == (1e-4, 0)
    assert tolerance_for("output.bool_mask", rules) == (0.0, 0.0)


def test_bad_textsynch_file_is_one_readable_error(tmp_path: Path) -> None:
    bad = tmp_path / "video_enc_sup_5.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(TextSynchError, match="video_enc_sup_5.pth"):
        load_textsynch(bad)


@pytest.fixture(scope="module")
def tiny_encoders(tmp_path_factory):
    from selva_engine.video.encoders import load_video_encoders
    from selva_engine.weights.tiny import make_tiny

    root = tmp_path_factory.mktemp("tiny_weights")
    make_tiny(root, "tiny_16k")
    enc = load_video_encoders(root)
    yield root, enc
    enc.free()


def test_tiny_encoders_real_output_widths(tiny_encoders) -> None:
    from selva_engine.model.variants import get_variant

    _, enc = tiny_encoders
    v = get_variant("tiny_16k")
    assert (enc.clip_dim, enc.sync_dim, enc.dtype) == (v.clip_dim, v.sync_dim, torch.float32)
    frames = torch.rand(1, 3, 3, 384, 384)
    clip = enc.encode_clip(frames)
    assert clip.shape == (1, 3, v.clip_dim) and clip.dtype == torch.float32
    assert torch.allclose(clip.norm(dim=-1), torch.ones(1, 3), atol=1e-5)
    text_f, mask = enc.encode_text(["a dog barking", "  rain  "])
    assert text_f.shape[:2] == mask.shape and mask[:, :5].all() and mask.dtype == torch.bool
    assert mask[1].sum() < mask[0].sum()  # padded row
    sync = torch.rand(2, 27, 3, 224, 224)  # 27 frames -> 2 segments, 3 trailing frames dropped
    out_all = enc.encode_sync(sync, text_f, mask)
    out_one = enc.encode_sync(sync, text_f, mask, segment_batch=1)
    assert out_all.shape == (2, 16, v.sync_dim)
    assert torch.allclose(out_all, out_one, atol=1e-4)
    with pytest.raises(ValueError, match="16 frames"):
        enc.encode_sync(sync[:, :10], text_f, mask)


def test_tiny_tokenizer_pipeline(tiny_encoders) -> None:
    """Whitespace dropped, empty prompt -> </s>, special tokens matched, truncation at 512."""
    _, enc = tiny_encoders
    ids, _ = enc.t5.tokenize(["a dog", "   a   dog  "])
    assert ids[0].tolist() == ids[1].tolist() and ids[0, -1] == 1
    assert enc.t5.tokenize([""])[0].tolist() == [[1]]
    assert enc.t5.tokenize(["dog </s>"])[0][0].tolist()[-2:] == [1, 1]
    long_ids, _ = enc.t5.tokenize(["dog " * 700])
    assert long_ids.shape == (1, 512) and long_ids[0, -1] == 1


def test_identity_changes_with_weights(tiny_encoders, tmp_path: Path) -> None:
    from selva_engine.video.encoders import load_video_encoders
    from selva_engine.weights.tiny_video import write_tiny_textsynch

    root, enc = tiny_encoders
    other = tmp_path / "w"
    other.mkdir()
    for name in ("t5", "clip"):
        (other / name).symlink_to(root / name)
    write_tiny_textsynch(other / "video_enc_sup_5.pth", sync_dim=enc.sync_dim, seed=99)
    enc2 = load_video_encoders(other)
    assert enc2.identity != enc.identity
    enc2.free()
    with pytest.raises(RuntimeError, match="freed"):
        enc2.encode_text(["x"])


def test_bf16_matches_fp32_by_cosine(tiny_encoders) -> None:
    """The node's GPU default dtype, here on the CPU: same features up to bf16 rounding."""
    from selva_engine.video.encoders import load_video_encoders

    root, enc = tiny_encoders
    half = load_video_encoders(root, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(0)
    clip_frames = torch.rand(1, 2, 3, 384, 384, generator=gen)
    sync_frames = torch.rand(1, 16, 3, 224, 224, generator=gen)
    cos = torch.nn.functional.cosine_similarity
    a, b = enc.encode_clip(clip_frames), half.encode_clip(clip_frames)
    assert b.dtype == torch.float32 and cos(a, b, dim=-1).min() > 0.99
    (tf, tm), (tf16, tm16) = enc.encode_text(["a dog"]), half.encode_text(["a dog"])
    assert tf16.dtype == torch.bfloat16 and torch.equal(tm, tm16)
    s, s16 = enc.encode_sync(sync_frames, tf, tm), half.encode_sync(sync_frames, tf16, tm16)
    assert s16.dtype == torch.float32 and cos(s, s16, dim=-1).min() > 0.99
    half.free()


def test_t5_encoder_from_a_built_model(video_golden_dir: Path) -> None:
    from selva_engine.conformance.video import build_t5
    from selva_engine.video.t5 import T5Encoder

    sidecar = json.loads((video_golden_dir / "t5_tiny.json").read_text())
    t5 = T5Encoder.from_model(build_t5(sidecar, video_golden_dir), video_golden_dir / "t5_tokenizer_tiny",
                              dtype=torch.bfloat16)
    assert t5.directory == video_golden_dir / "t5_tokenizer_tiny"
    assert not t5.model.training and not any(p.requires_grad for p in t5.model.parameters())
    hidden, mask = t5.encode(["a dog barking in the distance"])
    assert hidden.dtype == torch.bfloat16 and hidden.shape == (1, 9, 48) and mask.all()
    assert t5.tokenize(["a dog barking in the distance"])[0].tolist() == [[4, 18, 33, 106, 3, 5, 7, 64, 1]]
