"""Generator: manifests of the real variants, checkpoint loading, sequence lengths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from selva_engine.io import UnsafeFileError
from selva_engine.model.generator import Generator, GeneratorLoadError, load_generator
from selva_engine.model.lora import find_targets
from selva_engine.model.variants import VARIANTS, get_variant, variant_names

REAL = ["small_16k", "small_44k", "medium_44k", "large_44k", "large_44k_v2"]


def meta_generator(name: str) -> Generator:
    with torch.device("meta"):
        return Generator(**get_variant(name).generator_kwargs())


@pytest.mark.parametrize("name", REAL)
def test_state_dict_matches_manifest(golden_dir, name):
    manifest = json.loads((golden_dir / "manifests" / f"generator_{name}.json").read_text())
    assert manifest["constructor_config"] == {
        k: v for k, v in get_variant(name).generator_kwargs().items()
    }
    sd = meta_generator(name).state_dict()
    want = [(e["key"], tuple(e["shape"])) for e in manifest["state_dict"]]
    assert [(k, tuple(t.shape)) for k, t in sd.items()] == want
    assert sum(t.numel() for t in sd.values()) == manifest["total_state_dict_numel"]


@pytest.mark.parametrize("name", REAL)
def test_lora_target_counts_match_manifest(golden_dir, name):
    manifest = json.loads((golden_dir / "manifests" / f"generator_{name}.json").read_text())
    model = meta_generator(name)
    assert sorted(find_targets(model, ["attn.qkv"])) == sorted(manifest["linear_modules_ending_attn.qkv"])
    assert sorted(find_targets(model, ["linear1"])) == sorted(manifest["linear_modules_ending_linear1"])


def test_variant_table_and_sequences(golden_dir):
    seq = json.loads((golden_dir / "manifests" / "sequence_config.json").read_text())
    for mode, variant in (("16k", "small_16k"), ("44k", "small_44k")):
        v = get_variant(variant)
        for dur, expected in seq[mode]["other_durations"].items():
            s = v.sequence(float(dur))
            got = {k: getattr(s, k) for k in expected}
            assert got == expected, (mode, dur)
    assert get_variant("small_44k").sequence().num_audio_frames == 353280
    assert get_variant("small_16k").sequence().num_audio_frames == 128000


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="small_16k.*large_44k"):
        get_variant("huge_48k")
    assert "tiny_16k" in variant_names() and "tiny_16k" not in variant_names(include_tiny=False)


class Payload:
    """A Python object that torch.save pickles and weights_only loading must refuse."""


def _tiny_state(seed: int = 0, name: str = "tiny_16k") -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = Generator(**get_variant(name).generator_kwargs())
    sd = model.state_dict()
    sd["latent_mean"] = torch.zeros_like(sd["latent_mean"])
    sd["latent_std"] = torch.ones_like(sd["latent_std"])
    return sd


def test_load_generator_roundtrip_and_dropped_keys(tmp_path):
    sd = _tiny_state()
    sd["t_embed.freqs"] = torch.zeros(128)  # old checkpoints carry these; the loader drops them
    sd["latent_rot"] = torch.zeros(3)
    path = tmp_path / "generator_tiny_16k_sup_5.pth"
    torch.save(sd, path)
    model = load_generator(path, "tiny_16k")
    assert not any(p.requires_grad for p in model.parameters())
    assert model.latent_rot.shape == (1, 250, 32, 2, 2)
    assert torch.equal(model.audio_input_proj[0].weight, sd["audio_input_proj.0.weight"])


def test_load_generator_wrong_variant_names_file_and_keys(tmp_path):
    path = tmp_path / "gen.pth"
    torch.save(_tiny_state(name="tiny_16k"), path)
    with pytest.raises(GeneratorLoadError) as err:
        load_generator(path, "tiny_44k")
    msg = str(err.value)
    assert str(path) in msg and "tiny_44k" in msg and "mis-shaped" in msg
    sd = _tiny_state()
    del sd["final_layer.conv.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, path)
    with pytest.raises(GeneratorLoadError, match="missing: final_layer.conv.bias.*unexpected: extra.weight"):
        load_generator(path, "tiny_16k")


def test_load_generator_truncated_and_pickled(tmp_path):
    path = tmp_path / "gen.pth"
    torch.save(_tiny_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UnsafeFileError, match="truncated"):
        load_generator(path, "tiny_16k")

    torch.save({"x": Payload()}, path)
    with pytest.raises(UnsafeFileError, match="pickled"):
        load_generator(path, "tiny_16k")
    with pytest.raises(FileNotFoundError, match="generator checkpoint"):
        load_generator(tmp_path / "missing.pth", "tiny_16k")


def test_update_seq_lengths_other_duration():
    v = get_variant("tiny_16k")
    torch.manual_seed(0)
    model = Generator(**v.generator_kwargs()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    s = v.sequence(5.0)
    model.update_seq_lengths(s.latent_seq_len, s.clip_seq_len, s.sync_seq_len)
    b = 2
    latent = torch.randn(b, s.latent_seq_len, v.latent_dim)
    out = model(latent, torch.randn(b, s.clip_seq_len, 1024), torch.randn(b, s.sync_seq_len, 768),
                torch.randn(b, 77, v.text_dim), torch.rand(b))
    assert out.shape == latent.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="clip_f must be"):
        model(latent, torch.randn(b, 64, 1024), torch.randn(b, s.sync_seq_len, 768),
              torch.randn(b, 77, v.text_dim), torch.rand(b))


def test_preprocessed_conditions_reused_across_steps(golden_dir):
    side = json.loads((golden_dir / "generator_tiny.json").read_text())
    model = Generator(**side["constructor_config"]).eval()
    with np.load(golden_dir / side["weights_file"]) as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    with np.load(golden_dir / side["io_file"]) as z:
        io = {k: torch.from_numpy(z[k]) for k in z.files}
    with torch.no_grad():
        cond = model.preprocess_conditions(io["input.clip_f"], io["input.sync_f"], io["input.text_f"])
        a = model.predict_flow(io["input.latent"], io["input.t"], cond)
        b = model(io["input.latent"], io["input.clip_f"], io["input.sync_f"], io["input.text_f"], io["input.t"])
    assert torch.equal(a, b)
    np.testing.assert_allclose(a.numpy(), io["output.flow"].numpy(), atol=1e-4, rtol=1e-4)


def test_all_variants_constructible_on_meta():
    for name in VARIANTS:
        model = meta_generator(name)
        assert model.latent_rot.shape[1] == get_variant(name).sequence().latent_seq_len
