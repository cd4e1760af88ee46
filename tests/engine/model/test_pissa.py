"""PiSSA: initialisation from the base's SVD, residual bases in adapter files, and the base
model restored when a PiSSA adapter is removed (SELVA-FACTS 9.2-9.4)."""

from __future__ import annotations

import copy

import torch

from selva_engine.model.lora import (
    AdapterError,
    apply_adapter,
    apply_lora,
    init_mode_of,
    load_adapter,
    lora_layers,
    lora_state_dict,
    remove_lora,
    save_adapter,
)
from tests.engine.model.test_lora import inputs, tiny


def _train_a_little(model: torch.nn.Module, seed: int = 3) -> None:
    """Move every lora_A / lora_B by a seeded random step (what training does)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.add_(0.05 * torch.randn(layer.lora_A.shape, generator=g))
            layer.lora_B.add_(0.05 * torch.randn(layer.lora_B.shape, generator=g))


def test_pissa_init_keeps_the_output_and_takes_the_principal_directions() -> None:
    model = tiny()
    before = model(*inputs())
    w0 = model.joint_blocks[0].latent_block.attn.qkv.weight.detach().clone()
    apply_lora(model, rank=4, alpha=8.0, rslora=True, init_mode="pissa", dropout=0.3)
    assert torch.allclose(model(*inputs()), before, atol=2e-5, rtol=1e-4)
    layer = model.joint_blocks[0].latent_block.attn.qkv
    assert layer.init_mode == "pissa" and isinstance(layer.dropout, torch.nn.Identity)
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    top = (u[:, :4] * s[:4]) @ vh[:4]
    assert torch.allclose(layer.lora_B @ layer.lora_A, top, atol=1e-5)
    assert torch.allclose(layer.linear.weight + layer.scale * layer.lora_B @ layer.lora_A, w0,
                          atol=1e-5)
    assert init_mode_of(model) == "pissa"


def test_pissa_adapter_carries_residuals_and_reproduces_the_trained_model(tmp_path) -> None:
    base = tiny()
    trained = copy.deepcopy(base)
    apply_lora(trained, rank=4, init_mode="pissa")
    _train_a_little(trained)
    want = trained(*inputs())
    sd = lora_state_dict(trained)
    assert "joint_blocks.0.latent_block.attn.qkv.linear.weight" in sd
    assert "joint_blocks.0.latent_block.attn.qkv.linear.bias" in sd
    path = save_adapter(tmp_path / "a.pt", sd, {"rank": 4, "alpha": 4.0, "target": ["attn.qkv"],
                                                "init_mode": "pissa"})
    adapter = load_adapter(path)
    assert adapter.init_mode == "pissa"
    fresh = copy.deepcopy(base)
    apply_adapter(fresh, adapter)
    assert torch.allclose(fresh(*inputs()), want, atol=1e-6)
    assert init_mode_of(fresh) == "pissa"  # a re-save keeps the residuals


def test_removing_a_pissa_adapter_restores_the_base_bit_for_bit(tmp_path) -> None:
    base = tiny()
    reference = base(*inputs())
    trained = copy.deepcopy(base)
    apply_lora(trained, rank=4, init_mode="pissa")
    _train_a_little(trained)
    pissa = save_adapter(tmp_path / "p.pt", lora_state_dict(trained), {"rank": 4})
    standard_model = copy.deepcopy(base)
    apply_lora(standard_model, rank=4)
    _train_a_little(standard_model, seed=9)
    std = save_adapter(tmp_path / "s.pt", lora_state_dict(standard_model), {"rank": 4})

    alone = copy.deepcopy(base)
    apply_adapter(alone, load_adapter(std))
    std_alone = alone(*inputs())

    model = copy.deepcopy(base)
    apply_adapter(model, load_adapter(pissa))
    remove_lora(model)
    assert torch.equal(model(*inputs()), reference)  # the baseline after PiSSA is the baseline
    apply_adapter(model, load_adapter(std))
    assert torch.equal(model(*inputs()), std_alone)  # S after P sounds like S alone


def test_pissa_init_then_remove_restores_the_base() -> None:
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4, init_mode="pissa")
    remove_lora(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_unknown_init_mode_is_refused() -> None:
    try:
        apply_lora(tiny(), rank=4, init_mode="loftq")
    except AdapterError as exc:
        assert "loftq" in str(exc) and "pissa" in str(exc)
    else:
        raise AssertionError("an unknown init_mode was accepted")
