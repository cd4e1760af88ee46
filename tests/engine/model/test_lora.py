"""LoRA: wrapping rule, adapter format (ComfyUI-SelVA), strength, merge/unmerge, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from selva_engine.model.generator import Generator
from selva_engine.model.lora import (
    AdapterError,
    LoRALinear,
    NoTargetsError,
    apply_adapter,
    apply_lora,
    load_adapter,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    merge_lora,
    remove_lora,
    save_adapter,
    set_strength,
    unmerge_lora,
)
from selva_engine.model.variants import get_variant


def tiny(seed: int = 0) -> Generator:
    torch.manual_seed(seed)
    model = Generator(**get_variant("tiny_16k").generator_kwargs()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
        model.latent_std.fill_(1.0)
    return model.requires_grad_(False)


def inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 250, 8, generator=g), torch.randn(b, 64, 1024, generator=g),
            torch.randn(b, 192, 768, generator=g), torch.randn(b, 77, 64, generator=g), torch.rand(b, generator=g))


def test_wrapping_rule_keys_and_init():
    model = tiny()
    before = model(*inputs())
    names = apply_lora(model, rank=4, targets=["attn.qkv", "linear1"])
    # 2 joint blocks x 3 streams + 1 fused = 7 qkv; text linear1 only in the non-last joint block
    assert len([n for n in names if n.endswith("attn.qkv")]) == 7
    assert [n for n in names if n.endswith("linear1")] == ["joint_blocks.0.text_block.linear1"]
    sd = model.state_dict()
    assert "joint_blocks.0.latent_block.attn.qkv.lora_A" in sd
    assert "joint_blocks.0.latent_block.attn.qkv.linear.weight" in sd
    assert sd["joint_blocks.0.latent_block.attn.qkv.lora_A"].shape == (4, 128)
    assert sd["joint_blocks.0.latent_block.attn.qkv.lora_B"].shape == (384, 4)
    assert torch.equal(model(*inputs()), before)  # B = 0: identical output at init
    a, b = lora_parameters(model)
    assert all(p.requires_grad for p in a + b)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all(n.endswith(("lora_A", "lora_B")) for n in trainable)


def test_real_variant_trainable_counts():
    # facts 9.1: r = 16 small: 573,440 (+43,008 with linear1); large 2,007,040 (+172,032)
    for name, qkv, lin in (("small_16k", 573440, 43008), ("large_44k", 2007040, 172032)):
        with torch.device("meta"):
            model = Generator(**get_variant(name).generator_kwargs())
        apply_lora(model, rank=16, targets=["attn.qkv"])
        n = sum(p.numel() for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B))
        assert n == qkv
        remove_lora(model)
        apply_lora(model, rank=16, targets=["attn.qkv", "linear1"])
        n2 = sum(p.numel() for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B))
        assert n2 == qkv + lin


def test_no_targets_error_lists_examples():
    with pytest.raises(NoTargetsError, match=r"\['attn.proj'\].*attn.qkv"):
        apply_lora(tiny(), rank=4, targets=["attn.proj"])


def _randomise(model):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def test_strength_merge_unmerge_equivalence():
    model = tiny()
    x = inputs()
    base = model(*x)
    apply_lora(model, rank=4, alpha=8)
    _randomise(model)
    set_strength(model, 0.5)
    live = model(*x)
    assert not torch.allclose(live, base, atol=1e-4)
    merged_w = None
    merge_lora(model)
    merged = model(*x)
    assert torch.allclose(live, merged, atol=1e-5)
    merged_w = model.joint_blocks[0].latent_block.attn.qkv.linear.weight.clone()
    unmerge_lora(model)
    assert not torch.equal(merged_w, model.joint_blocks[0].latent_block.attn.qkv.linear.weight)
    assert torch.allclose(model(*x), live, atol=1e-5)
    set_strength(model, 0.0)
    assert torch.allclose(model(*x), base, atol=1e-5)


def test_merge_refuses_non_finite_and_names_adapter():
    model = tiny()
    apply_lora(model, rank=2)
    layer = model.fused_blocks[0].attn.qkv
    with torch.no_grad():
        layer.lora_B.fill_(float("inf"))
        layer.lora_A.fill_(1.0)
    w = layer.linear.weight.clone()
    with pytest.raises(AdapterError, match="my_adapter.*fused_blocks.0.attn.qkv"):
        merge_lora(model, adapter_name="my_adapter")
    assert torch.equal(layer.linear.weight, w)


def test_rslora_scale():
    layer = LoRALinear(torch.nn.Linear(8, 8), rank=16, alpha=32, rslora=True)
    assert layer.scale == pytest.approx(8.0)
    assert LoRALinear(torch.nn.Linear(8, 8), rank=16, alpha=32).scale == pytest.approx(2.0)


def test_adapter_file_roundtrip_bare_and_wrapped(tmp_path):
    model = tiny()
    apply_lora(model, rank=4, alpha=8)
    _randomise(model)
    x = inputs()
    want = model(*x)
    meta = {"variant": "tiny_16k", "rank": 4, "alpha": 8.0, "target": ["attn.qkv"], "steps": 10}
    path = save_adapter(tmp_path / "adapter_final.pt", lora_state_dict(model), meta)
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"state_dict", "meta"}
    assert all(k.endswith(("lora_A", "lora_B")) for k in raw["state_dict"])

    fresh = tiny()
    apply_adapter(fresh, load_adapter(path), variant="tiny_16k")
    assert torch.allclose(fresh(*x), want, atol=1e-6)

    bare = tmp_path / "bare.pt"
    torch.save(lora_state_dict(model), bare)
    ad = load_adapter(bare)
    assert ad.rank == 4 and ad.target == ["attn.qkv"]
    fresh2 = tiny()
    apply_adapter(fresh2, ad, strength=2.0)
    set_strength(fresh2, 1.0)
    # bare files carry no alpha: the loader's default alpha = rank (scale 1) differs from 2
    assert not torch.allclose(fresh2(*x), want, atol=1e-4)


def test_adapter_mismatches_are_clear_errors(tmp_path):
    model = tiny()
    apply_lora(model, rank=4)
    sd = lora_state_dict(model)
    path = save_adapter(tmp_path / "a.pt", sd, {"variant": "tiny_44k", "rank": 4, "alpha": 4, "target": ["attn.qkv"]})
    with pytest.raises(AdapterError, match="tiny_44k.*not 'tiny_16k'"):
        apply_adapter(tiny(), load_adapter(path), variant="tiny_16k")
    path = save_adapter(tmp_path / "b.pt", sd, {"rank": 8, "alpha": 8, "target": ["attn.qkv"]})
    with pytest.raises(AdapterError, match="rank 8.*rank 4"):
        load_adapter(path)
    path = save_adapter(tmp_path / "c.pt", sd, {"rank": 4, "alpha": 4, "target": ["attn.qkv", "linear1"]})
    with pytest.raises(AdapterError, match="missing 2 LoRA keys"):
        apply_adapter(tiny(), load_adapter(path))
    target = tiny()
    with pytest.raises(AdapterError):
        apply_adapter(target, load_adapter(path))
    assert not lora_layers(target)  # nothing half-applied
    with torch.device("meta"):
        big = Generator(**get_variant("small_16k").generator_kwargs())
    with pytest.raises(AdapterError, match="shape"):
        load_adapter_into = load_adapter(tmp_path / "a.pt")
        load_adapter_into.meta.pop("variant")
        apply_adapter(big, load_adapter_into)
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pt"):
        load_adapter(tmp_path / "junk.pt")


def test_golden_adapter_file_loads_as_comfyui_pt(golden_dir, tmp_path):
    side = json.loads((golden_dir / "lora_tiny.json").read_text())
    model = Generator(**side["constructor_config"]).eval()
    with np.load(golden_dir / side["base_weights_file"]) as z:
        model.load_state_dict({k: torch.from_numpy(z[k]) for k in z.files})
    with np.load(golden_dir / side["adapter_file"]) as z:
        sd = {k: torch.from_numpy(z[k]) for k in z.files}
    path = tmp_path / "comfy.pt"
    torch.save({"state_dict": sd, "meta": {"rank": 4, "alpha": 8.0, "target": ["attn.qkv"]}}, path)
    apply_adapter(model, load_adapter(path), strength=0.5)
    with np.load(golden_dir / side["io_file"]) as z:
        io = {k: torch.from_numpy(z[k]) for k in z.files}
    with torch.no_grad():
        out = model(io["input.latent"], io["input.clip_f"], io["input.sync_f"], io["input.text_f"], io["input.t"])
    np.testing.assert_allclose(out.numpy(), io["output.flow_strength_0.5"].numpy(), atol=1e-4, rtol=1e-4)


def test_bf16_autocast_step_keeps_fp32_lora_weights():
    """The GPU training path (bf16 autocast, fp32 LoRA master weights), run on the CPU."""
    from selva_engine.model.flow import FlowMatching

    model = tiny()
    apply_lora(model, rank=4, dtype=torch.float32)
    latent, clip, sync, text, t = inputs()
    fm = FlowMatching()
    x0 = torch.randn_like(latent)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = model.preprocess_conditions(clip, sync, text)
        v = model.predict_flow(fm.path(x0, latent, t), t, cond)
    assert v.dtype == torch.bfloat16
    loss = fm.loss(v.float(), x0, latent).mean()
    loss.backward()
    a, b = lora_parameters(model)
    assert all(p.dtype == torch.float32 and p.grad is not None and p.grad.dtype == torch.float32
               for p in a + b)
    assert all(torch.isfinite(p.grad).all() for p in a + b)
    with torch.no_grad():
        ref = model.predict_flow(fm.path(x0, latent, t), t, model.preprocess_conditions(clip, sync, text))
    # bf16 rounding only: the mean error is what bf16 costs (0.029 here); the maximum over
    # the 4,000 outputs moves with the order of summation (0.135 with nn.Conv1d, 0.150 with
    # the kernel-3 convolution as one GEMM), so it gets a looser bound than the mean
    err = (v.float() - ref).abs()
    assert err.mean() < 0.04 and err.max() < 0.2, (err.mean(), err.max())


def test_frozen_weights_stored_in_bf16_give_autocast_numbers_exactly():
    """store_frozen_in_compute_dtype only removes autocast's per-step casts: the forward and
    the LoRA gradients are bit-identical, and the LoRA weights stay fp32."""
    from selva_engine.model.flow import FlowMatching
    from selva_engine.training.loop import store_frozen_in_compute_dtype

    latent, clip, sync, text, t = inputs()
    fm = FlowMatching()
    x0 = torch.randn(latent.shape, generator=torch.Generator().manual_seed(5))
    results = []
    for cast in (False, True):
        model = tiny()
        apply_lora(model, rank=4, targets=["attn.qkv", "linear1"], dtype=torch.float32,
                   generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            for p in lora_parameters(model)[1]:
                p.normal_(0, 0.02)  # B != 0 so the LoRA path contributes
        if cast:
            assert store_frozen_in_compute_dtype(model, "fp32") == 0
            count = store_frozen_in_compute_dtype(model, "bf16")
            assert count > 0
            assert model.joint_blocks[0].latent_block.attn.qkv.linear.weight.dtype == torch.bfloat16
            assert model.audio_input_proj[0].weight.dtype == torch.bfloat16
            assert model.latent_std.dtype == torch.float32 and model.sync_pos_emb.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = model.predict_flow(fm.path(x0, latent, t), t, model.preprocess_conditions(clip, sync, text))
        fm.loss(v.float(), x0, latent).mean().backward()
        a, b = lora_parameters(model)
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in a + b)
        results.append((v.float(), [p.grad.clone() for p in a + b]))
    (v0, g0), (v1, g1) = results
    assert torch.equal(v0, v1)
    assert all(torch.equal(x, y) for x, y in zip(g0, g1, strict=True))


def test_step_runner_keeps_losses_on_device_until_flush_and_names_the_diverged_step():
    from selva_engine.model.flow import FlowMatching
    from selva_engine.training.loop import StepRunner, TrainError, make_scheduler
    from selva_engine.training.options import TrainConfig

    model = tiny()
    apply_lora(model, rank=4, dtype=torch.float32)
    latent, clip, sync, text, _ = inputs(3)
    cfg = TrainConfig(batch_size=2, precision="fp32", warmup_steps=0)
    a, b = lora_parameters(model)
    optimizer = torch.optim.AdamW(a + b, lr=1e-3)
    with torch.no_grad():
        cond = model.preprocess_conditions(clip, sync, text)
    lat = latent.clone()
    runner = StepRunner(model, FlowMatching(), cfg, lat_mean=lat, lat_std=torch.zeros_like(lat),
                        conditions=cond.index, autocast=torch.autocast("cpu", enabled=False),
                        scaler=torch.amp.GradScaler("cpu", enabled=False), optimizer=optimizer,
                        scheduler=make_scheduler(optimizer, cfg), params=a + b,
                        gen_t=torch.Generator().manual_seed(0), gen_noise=torch.Generator().manual_seed(1))
    for _ in range(3):
        runner.micro_step([0, 1])
        runner.optimizer_step()
    losses, norms = runner.flush(3)
    assert len(losses) == 3 and len(norms) == 3
    assert all(math.isfinite(x) and x > 0 for x in losses + norms)
    assert runner.flush(3) == ([], [])
    runner.micro_step([0, 1])  # step 4 is fine
    lat[2, 0, 0] = float("nan")  # clip 2 turns non-finite: step 5 diverges
    runner.micro_step([2, 0])
    with pytest.raises(TrainError, match=r"step 5: loss became nan"):
        runner.flush(5)
