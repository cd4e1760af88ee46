"""Parity with ComfyUI-SelVA's newest trainer: PiSSA runs and resumes (theirs too), the
curriculum switch across a resume, latent mixup/noise, spectral surgery, file naming, meta."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from selva_engine.model import flow as flow_module
from selva_engine.model.generator import load_generator
from selva_engine.model.lora import apply_adapter, load_adapter
from selva_engine.model.variants import get_variant
from selva_engine.training import loop
from selva_engine.training.loop import timestep_mode_at
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import TrainError, train
from selva_engine.weights.locate import resolve
from tests.engine.training.test_trainer import _run, config

META_KEYS = {"variant", "rank", "alpha", "target", "steps", "timestep_mode", "logit_normal_sigma",
             "curriculum_switch", "lora_dropout", "lora_plus_ratio", "lr_schedule", "init_mode",
             "use_rslora", "latent_mixup_alpha", "latent_noise_sigma"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, make_clips):
    return make_clips(tmp_path_factory.mktemp("data"), 4)


def _inputs(variant: str = "tiny_16k"):
    v, s = get_variant(variant), get_variant(variant).sequence()
    g = torch.Generator().manual_seed(5)
    return (torch.randn(1, s.latent_seq_len, v.latent_dim, generator=g),
            torch.randn(1, s.clip_seq_len, v.clip_dim, generator=g),
            torch.randn(1, s.sync_seq_len, v.sync_dim, generator=g),
            torch.randn(1, v.text_seq_len, v.text_dim, generator=g), torch.rand(1, generator=g))


def _tensors_equal(a: Path, b: Path) -> bool:
    sa, sb = load_adapter(a).state_dict, load_adapter(b).state_dict
    return set(sa) == set(sb) and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


def test_curriculum_switch_point_counts_from_the_resume_step() -> None:
    cfg = TrainConfig(steps=10, timestep_sampling="curriculum", curriculum_switch=0.5)
    assert [timestep_mode_at(cfg, s) for s in range(1, 11)] == ["logit_normal"] * 5 + ["uniform"] * 5
    # resumed at step 4: 4 + floor(6 * 0.5) = 7
    assert [timestep_mode_at(cfg, s, 4) for s in range(5, 11)] == ["logit_normal"] * 3 + ["uniform"] * 3
    assert timestep_mode_at(TrainConfig(timestep_sampling="uniform"), 1) == "uniform"


def test_curriculum_across_a_real_resume(tmp_path, dataset, tiny_weights, monkeypatch) -> None:
    modes: list[str] = []
    real = flow_module.sample_timesteps

    def recording(batch, mode="uniform", **kw):
        modes.append(mode)
        return real(batch, mode, **kw)

    monkeypatch.setattr(loop, "sample_timesteps", recording)
    kw = dict(steps=10, save_every=10, log_every=1, timestep_sampling="curriculum",
              curriculum_switch=0.5)
    first, _ = _run(config(dataset, tmp_path / "c", tiny_weights, **kw), stop_at=4)
    assert first.step == 4 and modes == ["logit_normal"] * 4
    modes.clear()
    _run(config(dataset, tmp_path / "c", tiny_weights, resume="latest", **kw))
    assert modes == ["logit_normal"] * 3 + ["uniform"] * 3


def test_pissa_run_adapter_reproduces_the_trained_model(tmp_path, dataset, tiny_weights) -> None:
    out = tmp_path / "p"
    result = train(config(dataset, out, tiny_weights, steps=6, save_every=3, init_mode="pissa",
                          lora_dropout=0.2, rank=4, alpha=8.0, rslora=True))
    final = load_adapter(result.final_adapter)
    assert final.meta["init_mode"] == "pissa" and final.meta["lora_dropout"] == 0.2
    assert META_KEYS <= set(final.meta)
    assert any(k.endswith(".linear.weight") for k in final.state_dict)
    for name in ("adapter_step00003.pt", "adapter_step00006.pt"):
        ckpt = torch.load(out / name, weights_only=True)
        assert ckpt["meta"]["init_mode"] == "pissa"
        assert any(k.endswith(".linear.weight") for k in ckpt["state_dict"])
    assert META_KEYS <= set(json.loads((out / "meta.json").read_text()))
    # the trained model = a fresh base + the adapter, as ComfyUI-SelVA's loader rebuilds it
    w = resolve(tiny_weights, "tiny_16k")
    trained = load_generator(w.generator, get_variant("tiny_16k"))
    apply_adapter(trained, final)
    base = load_generator(w.generator, get_variant("tiny_16k"))
    manual = copy.deepcopy(base)
    sd = final.state_dict
    with torch.no_grad():  # the update by hand: residual + scale * B A, nothing else
        for key in [k for k in sd if k.endswith(".lora_A")]:
            name = key[: -len(".lora_A")]
            layer = manual.get_submodule(name)
            scale = 8.0 / np.sqrt(4)
            layer.weight.copy_(sd[f"{name}.linear.weight"] + scale * sd[f"{name}.lora_B"] @ sd[key])
    trained.eval(), manual.eval()
    with torch.no_grad():
        a, b = trained(*_inputs()), manual(*_inputs())
    assert torch.allclose(a, b, atol=1e-5)
    with torch.no_grad():
        assert not torch.allclose(base(*_inputs()), a, atol=1e-4)  # it did learn something


def test_resuming_a_pissa_checkpoint_with_zero_steps_reproduces_it(tmp_path, dataset,
                                                                    tiny_weights) -> None:
    out = tmp_path / "z"
    train(config(dataset, out, tiny_weights, steps=4, save_every=4, init_mode="pissa", rank=4))
    events: list[dict] = []
    again = train(config(dataset, out, tiny_weights, steps=4, save_every=4, resume="latest",
                         rank=4), events=events.append)  # init_mode left at its default
    assert again.final_adapter.name == "adapter_final_001.pt"  # never overwrites adapter_final.pt
    assert _tensors_equal(out / "adapter_final.pt", again.final_adapter)
    assert load_adapter(again.final_adapter).meta["init_mode"] == "pissa"
    assert any("as it was trained" in e.get("message", "") for e in events)


def _their_checkpoint(tmp_path: Path, dataset: Path, weights: Path) -> Path:
    """A step checkpoint as ComfyUI-SelVA's node writes it: bf16 tensors, PiSSA residuals,
    alpha 8 with rsLoRA, {"state_dict", "optimizer", "scheduler", "step", "meta"} only."""
    ours = tmp_path / "src"
    train(config(dataset, ours, weights, steps=3, save_every=3, init_mode="pissa", rank=4,
                 alpha=8.0, rslora=True))
    ckpt = torch.load(ours / "adapter_step00003.pt", weights_only=True)
    theirs = {"state_dict": {k: v.to(torch.bfloat16) for k, v in ckpt["state_dict"].items()},
              "optimizer": ckpt["optimizer"], "scheduler": ckpt["scheduler"], "step": 3,
              "meta": {"variant": "tiny_16k", "rank": 4, "alpha": 8.0, "target": ["attn.qkv"],
                       "steps": 3, "init_mode": "pissa", "use_rslora": True}}
    run = tmp_path / "theirs"
    run.mkdir()
    torch.save(theirs, run / "adapter_step00003.pt")
    return run


def test_resuming_their_pissa_checkpoint_keeps_residuals_and_meta(tmp_path, dataset,
                                                                  tiny_weights) -> None:
    run = _their_checkpoint(tmp_path, dataset, tiny_weights)
    result = train(config(dataset, run, tiny_weights, steps=3, save_every=3, resume="latest"))
    final = load_adapter(result.final_adapter)
    assert final.meta["init_mode"] == "pissa" and final.meta["use_rslora"] is True
    assert final.meta["alpha"] == 8.0 and final.meta["rank"] == 4
    assert _tensors_equal(run / "adapter_step00003.pt", result.final_adapter)
    more = train(config(dataset, run, tiny_weights, steps=5, save_every=5, resume="latest"))
    assert any(k.endswith(".linear.weight") for k in load_adapter(more.final_adapter).state_dict)


def test_a_flag_that_disagrees_with_the_checkpoint_is_an_error(tmp_path, dataset,
                                                               tiny_weights) -> None:
    run = _their_checkpoint(tmp_path, dataset, tiny_weights)
    with pytest.raises(TrainError, match=r"rank 8 but the checkpoint was trained with 4"):
        train(config(dataset, run, tiny_weights, steps=4, resume="latest", rank=8))
    with pytest.raises(TrainError, match=r"alpha 2\.0 but .* 8\.0"):
        train(config(dataset, run, tiny_weights, steps=4, resume="latest", alpha=2.0))


def test_resuming_their_checkpoint_records_the_lr_and_decay_it_trains_with(tmp_path, dataset,
                                                                          tiny_weights) -> None:
    """Loading a checkpoint's optimizer state brings back its learning rate and weight decay:
    the run's meta says so (not the options' defaults), and an explicit other value is refused."""
    run = _their_checkpoint(tmp_path, dataset, tiny_weights)
    path = run / "adapter_step00003.pt"
    ckpt = torch.load(path, weights_only=True)
    for group in ckpt["optimizer"]["param_groups"]:
        group.update(initial_lr=group["initial_lr"] * 3, lr=group["lr"] * 3, weight_decay=0.05)
    torch.save(ckpt, path)
    base = ckpt["optimizer"]["param_groups"][0]["initial_lr"]
    events: list[dict] = []
    unset = TrainConfig().lr  # the test config's lr is not the default: leave it out here
    result = train(config(dataset, run, tiny_weights, steps=5, save_every=5, resume="latest",
                          lr=unset), events=events.append)
    meta = load_adapter(result.final_adapter).meta
    assert meta["lr"] == base and meta["weight_decay"] == 0.05
    assert json.loads((run / "meta.json").read_text())["lr"] == base
    said = " ".join(e.get("message", "") for e in events if e.get("event") == "warning")
    assert f"lr {base!r}" in said and "weight_decay 0.05" in said
    with pytest.raises(TrainError, match=r"weight_decay 0\.2 but the checkpoint was trained with 0\.05"):
        train(config(dataset, run, tiny_weights, steps=6, resume="latest", lr=unset,
                     weight_decay=0.2))


@pytest.mark.slow
def test_mixup_and_noise_are_deterministic_and_resume_exactly(tmp_path, dataset,
                                                               tiny_weights) -> None:
    kw = dict(log_every=1, latent_mixup_alpha=0.4, latent_noise_sigma=0.05)
    full, full_losses = _run(config(dataset, tmp_path / "full", tiny_weights, **kw))
    again, again_losses = _run(config(dataset, tmp_path / "again", tiny_weights, **kw))
    assert again_losses == full_losses
    plain, plain_losses = _run(config(dataset, tmp_path / "plain", tiny_weights, log_every=1))
    assert plain_losses != full_losses  # the augmentation does something
    first, first_losses = _run(config(dataset, tmp_path / "part", tiny_weights, **kw), stop_at=5)
    second, second_losses = _run(config(dataset, tmp_path / "part", tiny_weights, resume="latest",
                                        **kw))
    assert {**first_losses, **second_losses} == pytest.approx(full_losses, abs=1e-6)
    assert _tensors_equal(tmp_path / "full" / "adapter_final.pt",
                          tmp_path / "part" / "adapter_final.pt")


@pytest.mark.slow
def test_loss_falls_with_pissa_curriculum_and_mixup(tmp_path, dataset, tiny_weights) -> None:
    result, losses = _run(config(dataset, tmp_path / "l", tiny_weights, steps=60, save_every=60,
                                 log_every=5, batch_size=4, lr=2e-3, warmup_steps=5,
                                 init_mode="pissa", rank=8, timestep_sampling="curriculum",
                                 latent_mixup_alpha=0.3))
    values = [losses[s] for s in sorted(losses)]
    assert result.status == "done"
    assert np.mean(values[-3:]) < 0.85 * np.mean(values[:3]), values


def test_spectral_surgery_writes_a_second_adapter(tmp_path, dataset, tiny_weights) -> None:
    events: list[dict] = []
    out = tmp_path / "s"
    train(config(dataset, out, tiny_weights, steps=4, save_every=4, spectral_surgery="smooth_abs"),
          events=events.append)
    plain, operated = out / "adapter_final.pt", out / "adapter_final_surgery.pt"
    assert plain.is_file() and operated.is_file()
    assert not _tensors_equal(plain, operated)
    record = json.loads((out / "meta.json").read_text())["spectral_surgery"]
    assert record["mode"] == "smooth_abs" and record["adapter"] == operated.name
    assert record["samples"] == 16 and record["layers"] == 7  # min(128, 4 x 4 clips)
    assert load_adapter(operated).meta["spectral_surgery"]["mode"] == "smooth_abs"
    assert [e for e in events if e["event"] == "surgery"]


def test_step_files_of_another_run_are_not_mixed(tmp_path, dataset, tiny_weights) -> None:
    out = tmp_path / "m"
    train(config(dataset, out, tiny_weights, steps=2, save_every=2))
    with pytest.raises(TrainError, match="step checkpoints of another run"):
        train(config(dataset, out, tiny_weights, steps=2, save_every=2))


def test_cli_has_the_newest_flags() -> None:
    from selva_engine.cli import build_train_parser

    args = build_train_parser().parse_args(["--data_dir", "d"])
    assert (args.curriculum_switch, args.init_mode, args.latent_mixup_alpha,
            args.latent_noise_sigma, args.spectral_surgery) == (0.6, "standard", 0.0, 0.0, "off")
    args = build_train_parser().parse_args(["--data_dir", "d", "--timestep_mode", "curriculum",
                                            "--curriculum_switch", "0.4", "--init_mode", "pissa"])
    assert (args.timestep_sampling, args.curriculum_switch, args.init_mode) == (
        "curriculum", 0.4, "pissa")
