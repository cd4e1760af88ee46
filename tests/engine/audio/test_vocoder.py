"""Vocoders: BigVGAN v1/v2 goldens, manifest key set, both weight-norm spellings, v2 dirs, errors."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from selva_engine.audio.bigvgan import (
    BigVGAN,
    checkpoint_shapes,
    kaiser_sinc_filter,
    split_weight_norm,
)
from selva_engine.audio.vocoder import (
    V1_16K_CONFIG,
    V2_44K_CONFIG,
    VocoderLoadError,
    load_bigvgan_v1,
    load_bigvgan_v2,
    load_vocoder,
)
from selva_engine.conformance.runner import run_golden
from selva_engine.io import UnsafeFileError, atomic_torch_save, atomic_write_json


def test_bigvgan_golden(golden_dir):
    result = run_golden(golden_dir / "bigvgan_tiny.json")
    assert result.ok, result.line()


def test_bigvgan_v2_golden(golden_dir):
    result = run_golden(golden_dir / "bigvgan_v2_tiny.json")
    assert result.ok, result.line()


def _v2_golden_copy(golden_dir, tmp_path, **overrides) -> dict:
    """Copy bigvgan_v2_tiny into tmp_path with `overrides` applied to its hyper-parameters."""
    for f in golden_dir.glob("bigvgan_v2_tiny.*"):
        shutil.copy(f, tmp_path / f.name)
    side = json.loads((golden_dir / "bigvgan_v2_tiny.json").read_text())
    side["hyper_parameters"] = dict(side["hyper_parameters"], **overrides)
    (tmp_path / "bigvgan_v2_tiny.json").write_text(json.dumps(side))
    return side


@pytest.mark.parametrize(
    ("field", "value", "symptom"),
    [
        ("use_tanh_at_final", True, "output.waveform"),  # tanh instead of the clamp
        ("use_bias_at_final", True, "conv_post.bias"),  # the strict load must miss the bias
        ("snake_logscale", False, "output.waveform"),
    ],
)
def test_bigvgan_v2_golden_needs_its_final_settings(golden_dir, tmp_path, field, value, symptom):
    """The runner passes only because the sidecar's v2 settings reach the network.

    The unchanged copy passes; the same weights and arrays with one setting flipped must fail.
    """
    side = _v2_golden_copy(golden_dir, tmp_path)
    assert side["hyper_parameters"][field] is not value
    assert run_golden(tmp_path / "bigvgan_v2_tiny.json").ok
    _v2_golden_copy(golden_dir, tmp_path, **{field: value})
    result = run_golden(tmp_path / "bigvgan_v2_tiny.json")
    assert not result.ok and symptom in result.line(), result.line()


def test_v2_final_clamp_binds():
    """Without tanh the conv_post output is clamped to [-1, 1]; the golden never reaches the clamp."""
    cfg = _tiny_v2_config()
    torch.manual_seed(1)
    models = [BigVGAN.from_config(dict(cfg, use_tanh_at_final=t)).eval() for t in (False, True)]
    models[1].load_state_dict(models[0].state_dict())
    pre: list[torch.Tensor] = []
    for m in models:
        m.conv_post.weight.data.mul_(50.0)  # drive the output well past +-1
        m.conv_post.register_forward_hook(lambda _m, _i, out: pre.append(out))
    mel = torch.randn(2, cfg["num_mels"], 5) * 3
    with torch.no_grad():
        clamped, soft = (m(mel) for m in models)
    assert float(pre[0].abs().max()) > 1.5 and torch.equal(pre[0], pre[1])
    assert torch.equal(clamped, pre[0].clamp(-1.0, 1.0))
    torch.testing.assert_close(soft, torch.tanh(pre[1]))


def test_v1_16k_key_set_matches_manifest(golden_dir):
    manifest = json.loads((golden_dir / "manifests" / "bigvgan_v1_16k.json").read_text())
    assert {k: v for k, v in manifest["model_relevant_hyper_parameters"].items()} == {
        k: v for k, v in V1_16K_CONFIG.items() if k not in ("use_tanh_at_final", "use_bias_at_final")
    }
    with torch.device("meta"):
        model = BigVGAN.from_config(V1_16K_CONFIG)
    for legacy, field in ((False, "state_dict"), (True, "state_dict_legacy_names")):
        expected = {e["key"]: tuple(e["shape"]) for e in manifest[field]}
        assert checkpoint_shapes(model, legacy=legacy) == expected
    shapes = checkpoint_shapes(model)
    n_params = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith("filter"))
    assert n_params == manifest["total_parameter_count"]
    assert model.hop == 256


def test_filter_values_match_facts():
    expected = [0.0020290, 0.0093895, -0.0255435, -0.0576574, 0.1285726, 0.4432098]
    f = kaiser_sinc_filter(0.25, 0.3, 12).flatten().numpy()
    np.testing.assert_allclose(f[:6], expected, atol=2e-7)
    np.testing.assert_allclose(f[6:], expected[::-1], atol=2e-7)


def _golden_model(golden_dir) -> tuple[dict, dict[str, torch.Tensor], dict]:
    side = json.loads((golden_dir / "bigvgan_tiny.json").read_text())
    with np.load(golden_dir / side["weights_file"], allow_pickle=False) as z:
        sd = {k: torch.from_numpy(z[k]) for k in z.files}
    with np.load(golden_dir / side["io_file"], allow_pickle=False) as z:
        io = {k: z[k] for k in z.files}
    return side["hyper_parameters"], sd, io


@pytest.mark.parametrize("legacy", [False, True])
def test_best_netg_both_spellings(golden_dir, tmp_path, legacy):
    hp, sd, io = _golden_model(golden_dir)
    if legacy:
        sd = {k.replace(".parametrizations.weight.original0", ".weight_g")
               .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in sd.items()}
    atomic_torch_save(tmp_path / "best_netG.pt", {"generator": sd})
    model = load_bigvgan_v1(tmp_path / "best_netG.pt", config=hp)
    with torch.no_grad():
        wave = model(torch.from_numpy(io["input.mel"]))
    np.testing.assert_allclose(wave.numpy(), io["output.waveform"], atol=1e-4, rtol=1e-4)
    assert not any(p.requires_grad for p in model.parameters())


def _tiny_v2_config() -> dict:
    return dict(V2_44K_CONFIG, num_mels=6, upsample_rates=[4, 2], upsample_kernel_sizes=[8, 4],
                upsample_initial_channel=8, resblock_kernel_sizes=[3],
                resblock_dilation_sizes=[[1, 3, 5]])


def test_v2_directory_round_trip(tmp_path):
    cfg = _tiny_v2_config()
    torch.manual_seed(0)
    model = BigVGAN.from_config(cfg)
    assert model.conv_post.bias is None and model.hop == 8
    atomic_write_json(tmp_path / "config.json", cfg)
    atomic_torch_save(tmp_path / "bigvgan_generator.pt",
                      {"generator": split_weight_norm(model, legacy=True)})
    loaded = load_vocoder("bigvgan_v2", tmp_path)
    mel = torch.randn(2, 6, 5) * 3
    with torch.no_grad():
        a, b = model(mel), loaded(mel)
    assert a.shape == (2, 1, 40)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert float(b.abs().max()) <= 1.0  # clamp, not tanh


def test_load_errors(golden_dir, tmp_path):
    hp, sd, _ = _golden_model(golden_dir)
    with pytest.raises(FileNotFoundError):
        load_bigvgan_v1(tmp_path / "best_netG.pt", config=hp)
    atomic_torch_save(tmp_path / "flat.pt", sd)
    with pytest.raises(VocoderLoadError, match="generator"):
        load_bigvgan_v1(tmp_path / "flat.pt", config=hp)
    atomic_torch_save(tmp_path / "ok.pt", {"generator": sd})
    with pytest.raises(VocoderLoadError, match="does not fit"):
        load_bigvgan_v1(tmp_path / "ok.pt")  # tiny weights into the real 16k network
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[:1000])
    with pytest.raises(UnsafeFileError):
        load_bigvgan_v1(tmp_path / "trunc.pt", config=hp)
    torch.save({"generator": sd, "args": argparse.Namespace(x=1)}, tmp_path / "pickled.pt")
    with pytest.raises(UnsafeFileError, match="pickled"):
        load_bigvgan_v1(tmp_path / "pickled.pt", config=hp)
    with pytest.raises(FileNotFoundError, match="config"):
        load_bigvgan_v2(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown vocoder"):
        load_vocoder("hifigan", tmp_path)
