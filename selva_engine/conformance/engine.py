"""Golden runners for the engine core: generator, lora and flow_matching kinds.

Each `run_<kind>(sidecar, golden_dir, io)` rebuilds what the sidecar describes with our
code, reading every setting (constructor config, steps, cfg, strengths, targets, min_sigma)
from the sidecar or from the names of the golden's output arrays, and returns arrays keyed
like the golden's. Used by `selva_engine.conformance.runner`.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Generator
from selva_engine.model.lora import apply_lora, load_lora_state_dict, set_strength

__all__ = ["run_flow_matching", "run_generator", "run_lora"]

_NUM = r"(-?\d+(?:\.\d+)?(?:e-?\d+)?)"


def _tensors(io: dict[str, np.ndarray], prefix: str = "input.") -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in io.items() if k.startswith(prefix)}


def _build_generator(config: dict, weights_path: Path) -> Generator:
    model = Generator(**config)
    with np.load(weights_path, allow_pickle=False) as z:
        sd = {k: torch.from_numpy(z[k]) for k in z.files}
    model.load_state_dict(sd, strict=True)
    return model.eval().requires_grad_(False)


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy()


@torch.no_grad()
def run_generator(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Forward, conditions, empty conditions, time embedding, RoPE, CFG Euler sampling, norm."""
    model = _build_generator(sidecar["constructor_config"], golden_dir / sidecar["weights_file"])
    x = _tensors(io)
    out: dict[str, np.ndarray] = {}
    b = x["latent"].shape[0]
    cond = model.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    empty = model.empty_conditions(b)
    out["output.flow"] = _np(model.predict_flow(x["latent"], x["t"], cond))
    for label, c in (("cond", cond), ("empty_cond", empty)):
        for name in ("clip_f", "sync_f", "text_f", "clip_f_c", "text_f_c"):
            out[f"debug.{label}.{name}"] = _np(getattr(c, name))
    out["debug.t_freq"] = _np(model.t_embed.frequency_features(x["t"]))
    out["debug.t_emb"] = _np(model.t_embed(x["t"]))
    out["debug.latent_rot"] = _np(model.latent_rot)
    out["debug.clip_rot"] = _np(model.clip_rot)
    out["debug.flow_uncond"] = _np(model.predict_flow(x["latent"], x["t"], empty))

    fm = FlowMatching(min_sigma=0.0, num_steps=int(sidecar["num_steps"]))
    default_cfg = float(sidecar["cfg_strength"])
    for key in io:
        m = re.fullmatch(r"output\.sample(.*?)\.(x1|trajectory|time_grid|x1_unnormalized)", key)
        if not m or key in out:
            continue
        variant = m.group(1)
        cfg, neg = default_cfg, None
        if variant.startswith("_cfg"):
            cfg = float(re.fullmatch(r"_cfg" + _NUM, variant).group(1))
        elif variant == "_neg":
            neg = x["neg_text_f"]
        elif variant:
            raise ValueError(f"unknown sampling variant in {key}")
        empty_s = model.empty_conditions(b, negative_text_features=neg)
        traj: list[torch.Tensor] = []
        x1 = fm.to_data(
            lambda t, z, e=empty_s, w=cfg: model.guided_flow(z, t, cond, e, w), x["x0"], trajectory=traj
        )
        prefix = f"output.sample{variant}"
        out[f"{prefix}.x1"] = _np(x1)
        out[f"{prefix}.trajectory"] = _np(torch.stack(traj))
        out[f"{prefix}.time_grid"] = _np(fm.time_grid())
        out[f"{prefix}.x1_unnormalized"] = _np(model.unnormalize(x1))
    if "raw_latent" in x:
        normed = model.normalize(x["raw_latent"])
        out["output.normalize.out"] = _np(normed)
        out["output.unnormalize.out"] = _np(model.unnormalize(normed))
    return out


@torch.no_grad()
def run_lora(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Base flow, then the wrapped model's flow at every strength named by the outputs."""
    model = _build_generator(sidecar["constructor_config"], golden_dir / sidecar["base_weights_file"])
    x = _tensors(io)
    lora = sidecar["lora"]

    def flow() -> np.ndarray:
        return _np(model(x["latent"], x["clip_f"], x["sync_f"], x["text_f"], x["t"]))

    out = {"output.flow_no_lora": flow()}
    names = apply_lora(
        model,
        rank=int(lora["rank"]),
        alpha=float(lora["alpha"]),
        targets=list(lora["target_suffixes"]),
        rslora=bool(lora.get("use_rslora", False)),
    )
    expected = sidecar.get("wrapped_modules")
    if expected is not None and sorted(names) != sorted(expected):
        raise ValueError(f"wrapped {sorted(names)}, golden wraps {sorted(expected)}")
    with np.load(golden_dir / sidecar["adapter_file"], allow_pickle=False) as z:
        sd = {k: torch.from_numpy(z[k]) for k in z.files}
    load_lora_state_dict(model, sd, source=sidecar["adapter_file"])
    strengths = {f"output.flow_strength_{s}": float(s) for s in lora.get("strengths", [])}
    for key in io:
        m = re.fullmatch(r"output\.flow_strength_" + _NUM, key)
        if m:
            strengths[key] = float(m.group(1))
    for key, s in strengths.items():
        set_strength(model, s)
        out[key] = flow()
    return out


def run_flow_matching(sidecar: dict, golden_dir: Path, io: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Path, target, both losses and the Euler integrator on an analytic field, per min_sigma."""
    x = _tensors(io)
    steps = int(sidecar.get("num_steps_for_euler", 25))
    sigmas = {"": 0.0}
    for key in io:
        m = re.fullmatch(r"output\.\w+?_min_sigma_" + _NUM, key)
        if m:
            sigmas[f"_min_sigma_{m.group(1)}"] = float(m.group(1))
    if sidecar.get("min_sigma_alt") is not None:
        alt = sidecar["min_sigma_alt"]
        sigmas.setdefault(f"_min_sigma_{alt}", float(alt))
    out: dict[str, np.ndarray] = {}
    x0, x1, t, v = x["x0"], x["x1"], x["t"], x["predicted_v"]
    for suffix, sigma in sigmas.items():
        fm = FlowMatching(min_sigma=sigma, num_steps=steps)
        out[f"output.xt{suffix}"] = _np(fm.path(x0, x1, t))
        out[f"output.target_v{suffix}"] = _np(fm.target(x0, x1))
        out[f"output.loss_v{suffix}"] = _np(fm.loss(v, x0, x1))
        out[f"output.loss_x1target{suffix}"] = _np(fm.loss_x1_target(v, x0, x1, t))
        out[f"output.euler_time_grid{suffix}"] = _np(fm.time_grid())
        out[f"output.euler_analytic{suffix}"] = _np(fm.to_data(lambda tt, z: torch.cos(3 * tt) * z + tt, x0))
    return out
