"""LoRA for the SelVA generator in the ComfyUI-SelVA format.

A wrapped layer keeps the original Linear as child `linear` and adds `lora_A` (r, in) and
`lora_B` (out, r), so the keys are `<module>.lora_A`, `<module>.lora_B` and the base moves to
`<module>.linear.weight/.bias`, exactly as ComfyUI-SelVA's trainer and LoRA Loader spell
them. Output: y = linear(x) + strength * scale * (dropout(x) A^T) B^T, scale = alpha / r
(alpha / sqrt(r) with rsLoRA). Adapter files are `{"state_dict", "meta"}` (or a bare state
dict) saved with torch.save and read with weights_only=True.

Two initialisations, as ComfyUI-SelVA's newest trainer has them (SELVA-FACTS 9.2):
"standard" (A Kaiming-uniform, B = 0) and "pissa" (A, B from the top-r singular triplets of
the fp32 base weight, base overwritten with the residual W - scale B A, so the initial output
is unchanged). A PiSSA layer's adapter tensors include its residual base
(`<module>.linear.weight/.bias`): without it the trained update is meaningless. A layer whose
base was overwritten (PiSSA init, or a PiSSA adapter loaded) keeps the original base on the
CPU, and `remove_lora` puts it back, so the next adapter sees the untouched model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selva_engine.io import atomic_torch_save, safe_torch_load

INIT_MODES = ("standard", "pissa")

__all__ = [
    "INIT_MODES",
    "Adapter",
    "AdapterError",
    "LoRALinear",
    "NoTargetsError",
    "apply_adapter",
    "apply_lora",
    "find_targets",
    "infer_meta",
    "init_mode_of",
    "load_adapter",
    "load_lora_state_dict",
    "lora_layers",
    "lora_parameters",
    "lora_state_dict",
    "merge_lora",
    "pissa_init_",
    "remove_lora",
    "save_adapter",
    "set_strength",
    "unmerge_lora",
]


class AdapterError(ValueError):
    """An adapter does not fit the model it is applied to, or its file is unusable."""


class NoTargetsError(AdapterError):
    """No nn.Linear module matched the requested target suffixes."""


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update (see module docstring)."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        alpha: float,
        *,
        rslora: bool = False,
        dropout: float = 0.0,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if rank < 1:
            raise AdapterError(f"LoRA rank must be >= 1, got {rank}")
        self.linear = base
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.rslora = bool(rslora)
        self.scale = self.alpha / (math.sqrt(rank) if rslora else rank)
        self.strength = 1.0
        self.merged_delta_scale: float | None = None  # strength*scale merged into the base
        self.init_mode = "standard"  # "pissa" once the base holds a PiSSA residual
        # the base weights as they were before a PiSSA residual replaced them (CPU copies)
        self.original_base: dict[str, torch.Tensor] | None = None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        w = base.weight
        dtype = dtype or w.dtype
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=dtype))
        if w.device.type != "meta":
            # Kaiming-uniform with a = sqrt(5): U(-1/sqrt(in), 1/sqrt(in)); B = 0.
            bound = 1.0 / math.sqrt(base.in_features)
            with torch.no_grad():
                a = torch.rand(self.lora_A.shape, generator=generator, dtype=torch.float32)
                self.lora_A.copy_((a * 2 - 1) * bound)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    @property
    def out_features(self) -> int:
        return self.linear.out_features

    def keep_original_base(self) -> None:
        """Remember the current base weight/bias (on the CPU) before it is overwritten, once."""
        if self.original_base is None:
            self.original_base = {k: v.detach().to("cpu", copy=True)
                                  for k, v in self.linear.named_parameters(recurse=False)}

    def restore_original_base(self) -> None:
        """Put back the base weights kept by `keep_original_base` (no-op if none were kept)."""
        if self.original_base is None:
            return
        with torch.no_grad():
            for key, value in self.original_base.items():
                param = getattr(self.linear, key)
                param.copy_(value.to(param.device, param.dtype))
        self.original_base = None
        self.init_mode = "standard"

    def delta_weight(self) -> torch.Tensor:
        """The unscaled-by-strength update scale * B @ A, fp32, shape (out, in)."""
        return self.scale * (self.lora_B.float() @ self.lora_A.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        if self.merged_delta_scale is not None or self.strength == 0.0:
            return y
        h = self.dropout(x)
        if not torch.is_autocast_enabled(h.device.type):
            h = h.to(self.lora_A.dtype)
        delta = (h @ self.lora_A.t()) @ self.lora_B.t()
        return y + (delta * (self.scale * self.strength)).to(y.dtype)


def pissa_init_(layer: LoRALinear, *, keep_original: bool = True) -> None:
    """PiSSA initialisation of one layer, in place (SELVA-FACTS 9.2).

    W = U S V^T in fp32; A = diag(sqrt(S_r)) V_r^T, B = U_r diag(sqrt(S_r)); the base weight
    becomes W - scale * B A (in its own dtype), so the layer's output is unchanged. Dropout is
    switched off (PiSSA trains the principal directions themselves). With `keep_original` the
    original base is kept on the CPU for `remove_lora` (a trainer that never removes its
    adapter passes False and saves that memory).
    """
    w = layer.linear.weight
    if keep_original:
        layer.keep_original_base()
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    r = layer.rank
    root = s[:r].sqrt()
    a = root[:, None] * vh[:r]  # (r, in)
    b = u[:, :r] * root[None, :]  # (out, r)
    with torch.no_grad():
        layer.lora_A.copy_(a.to(layer.lora_A.dtype))
        layer.lora_B.copy_(b.to(layer.lora_B.dtype))
        residual = w.float() - layer.scale * (layer.lora_B.float() @ layer.lora_A.float())
        w.copy_(residual.to(w.dtype))
    layer.dropout = nn.Identity()
    layer.init_mode = "pissa"


def find_targets(model: nn.Module, targets: list[str] | tuple[str, ...]) -> list[str]:
    """Dotted names of nn.Linear modules whose name ends with one of `targets` (suffixes)."""
    return [
        name
        for name, mod in model.named_modules()
        if type(mod) is nn.Linear and any(name.endswith(s) for s in targets)
        and not name.endswith(".linear")
    ]


def _no_targets(model: nn.Module, targets) -> NoTargetsError:
    examples = [n for n, m in model.named_modules() if type(m) is nn.Linear][:6]
    return NoTargetsError(
        f"no nn.Linear layer matched the LoRA target suffixes {list(targets)}; "
        f"valid targets are suffixes of Linear names such as {', '.join(examples)} "
        "(e.g. 'attn.qkv' or 'linear1')"
    )


def apply_lora(
    model: nn.Module,
    *,
    rank: int,
    alpha: float | None = None,
    targets: list[str] | tuple[str, ...] = ("attn.qkv",),
    rslora: bool = False,
    dropout: float = 0.0,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
    init_mode: str = "standard",
    keep_original: bool = True,
) -> list[str]:
    """Wrap every matching Linear of `model` in place; returns the wrapped module names.

    alpha defaults to rank. Base weights are frozen; only lora_A / lora_B require grad.
    `init_mode` "pissa" initialises each layer with `pissa_init_` (dropout forced to 0).
    Raises NoTargetsError (listing example layer names) when nothing matches.
    """
    if init_mode not in INIT_MODES:
        raise AdapterError(f"unknown LoRA init_mode {init_mode!r} (expected one of {INIT_MODES})")
    names = find_targets(model, targets)
    if not names:
        raise _no_targets(model, targets)
    alpha = float(rank if alpha is None else alpha)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        base = getattr(parent, child)
        base.requires_grad_(False)
        wrapped = LoRALinear(
            base, rank, alpha, rslora=rslora, dropout=dropout, dtype=dtype, generator=generator
        )
        if init_mode == "pissa":
            pissa_init_(wrapped, keep_original=keep_original)
        setattr(parent, child, wrapped)
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """name -> LoRALinear for every wrapped layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(all lora_A, all lora_B) parameters, in module order."""
    layers = lora_layers(model).values()
    return [m.lora_A for m in layers], [m.lora_B for m in layers]


def lora_state_dict(model: nn.Module, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The adapter tensors `<module>.lora_A/.lora_B`, detached, contiguous, on the CPU; for a
    PiSSA layer also its residual base `<module>.linear.weight/.bias` (in the base's dtype)."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_layers(model).items():
        for key in ("lora_A", "lora_B"):
            t = getattr(layer, key).detach()
            out[f"{name}.{key}"] = t.to("cpu", dtype or t.dtype).contiguous().clone()
        if layer.init_mode == "pissa":
            for key, t in layer.linear.named_parameters(recurse=False):
                out[f"{name}.linear.{key}"] = t.detach().to("cpu").contiguous().clone()
    return out


def init_mode_of(model: nn.Module) -> str:
    """"pissa" when the wrapped layers hold PiSSA residual bases, else "standard"."""
    modes = {layer.init_mode for layer in lora_layers(model).values()}
    return "pissa" if "pissa" in modes else "standard"


def load_lora_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor], *, source: str = "adapter",
    keep_original: bool = True,
) -> None:
    """Copy adapter tensors into the wrapped layers; key sets and shapes must match exactly.

    `<module>.linear.weight/.bias` keys (PiSSA residual bases) overwrite the base weights and
    mark those layers "pissa"; with `keep_original` the overwritten bases are kept on the CPU
    so that `remove_lora` restores the untouched model.
    """
    layers = lora_layers(model)
    expected = {f"{n}.{k}" for n in layers for k in ("lora_A", "lora_B")}
    lora_keys = {k for k in state_dict if k.endswith((".lora_A", ".lora_B"))}
    base_keys = {k for k in state_dict if k.endswith((".linear.weight", ".linear.bias"))}
    other = set(state_dict) - lora_keys - base_keys
    missing, unexpected = sorted(expected - lora_keys), sorted(lora_keys - expected)
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} LoRA keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(
            f"{len(unexpected)} LoRA keys for layers the model does not wrap (e.g. {', '.join(unexpected[:3])})"
        )
    if other:
        problems.append(f"{len(other)} keys that are not LoRA tensors (e.g. {', '.join(sorted(other)[:3])})")
    for key in sorted(lora_keys & expected):
        name, _, attr = key.rpartition(".")
        want = tuple(getattr(layers[name], attr).shape)
        if tuple(state_dict[key].shape) != want:
            problems.append(f"{key} has shape {tuple(state_dict[key].shape)}, the model needs {want}")
            break
    for key in sorted(base_keys):
        name = key.rsplit(".", 2)[0]
        if name not in layers:
            problems.append(f"{key} names a layer the model does not wrap")
            break
    if problems:
        raise AdapterError(f"{source} does not fit this model: " + "; ".join(problems))
    for key in sorted(base_keys):  # a PiSSA residual replaces the base: keep the original
        layer = layers[key.rsplit(".", 2)[0]]
        if keep_original:
            layer.keep_original_base()
        layer.init_mode = "pissa"
    with torch.no_grad():
        for key, value in state_dict.items():
            name, _, attr = key.rpartition(".")
            if attr in ("lora_A", "lora_B"):
                param = getattr(layers[name], attr)
            else:
                layer_name, _, _ = name.rpartition(".")
                param = getattr(layers[layer_name].linear, attr)
            param.copy_(value.to(param.dtype))


def set_strength(model: nn.Module, strength: float) -> None:
    """Set the inference strength of every LoRA layer (0 = base model, 1 = as trained)."""
    for layer in lora_layers(model).values():
        if layer.merged_delta_scale is not None:
            raise AdapterError("unmerge the adapter before changing its strength")
        layer.strength = float(strength)


def merge_lora(model: nn.Module, *, adapter_name: str = "adapter") -> None:
    """Fold strength * scale * B @ A into each base weight (no extra matmul at run time).

    Refuses (and leaves the model untouched) if any merged weight would be non-finite,
    naming the adapter and the first broken layer.
    """
    layers = lora_layers(model)
    merged: dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if layer.merged_delta_scale is not None:
            continue
        w = layer.linear.weight
        new = w.float() + layer.strength * layer.delta_weight()
        if not torch.isfinite(new).all():
            raise AdapterError(
                f"merging {adapter_name} gives non-finite weights in {name}; the adapter is broken"
            )
        merged[name] = new.to(w.dtype)
    with torch.no_grad():
        for name, new in merged.items():
            layer = layers[name]
            layer.linear.weight.copy_(new)
            layer.merged_delta_scale = layer.strength


def unmerge_lora(model: nn.Module) -> None:
    """Subtract a previously merged update from each base weight."""
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if layer.merged_delta_scale is None:
                continue
            w = layer.linear.weight
            w.copy_((w.float() - layer.merged_delta_scale * layer.delta_weight()).to(w.dtype))
            layer.merged_delta_scale = None


def remove_lora(model: nn.Module) -> None:
    """Put the original Linear modules back: a base that a PiSSA residual replaced is
    restored to the weights it had before; a merged standard update stays in the weights."""
    for name, layer in list(lora_layers(model).items()):
        if layer.original_base is not None:
            layer.merged_delta_scale = None  # the restored base carries no merged update
            layer.restore_original_base()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.linear)


# ---------------------------------------------------------------------------- adapter files
@dataclass
class Adapter:
    """An adapter file's content: tensors plus meta (rank, alpha, target, variant, ...)."""

    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def rank(self) -> int:
        return int(self.meta["rank"])

    @property
    def alpha(self) -> float:
        return float(self.meta.get("alpha") or self.rank)

    @property
    def target(self) -> list[str]:
        t = self.meta.get("target", ["attn.qkv"])
        return [t] if isinstance(t, str) else list(t)

    @property
    def rslora(self) -> bool:
        return bool(self.meta.get("use_rslora", False))

    @property
    def init_mode(self) -> str:
        """"pissa" when the file carries residual bases (whatever its meta says)."""
        if any(k.endswith((".linear.weight", ".linear.bias")) for k in self.state_dict):
            return "pissa"
        return str(self.meta.get("init_mode") or "standard")


def save_adapter(path: Path | str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any], **extra: Any) -> Path:
    """Atomically write `{"state_dict", "meta", **extra}` (ComfyUI-SelVA adapter format)."""
    payload = {"state_dict": {k: v.detach().cpu().contiguous() for k, v in state_dict.items()},
               "meta": dict(meta), **extra}
    return atomic_torch_save(path, payload)


def infer_meta(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Meta read off the tensors of an adapter state dict: rank from lora_A, targets from the
    layer names, alpha = rank; {} when it holds no LoRA layer."""
    a_keys = [k for k in sd if k.endswith(".lora_A")]
    if not a_keys:
        return {}
    rank = int(sd[a_keys[0]].shape[0])
    names = [k[: -len(".lora_A")] for k in a_keys]
    target = sorted({"attn.qkv" if n.endswith("attn.qkv") else n.rsplit(".", 1)[-1] for n in names})
    return {"rank": rank, "alpha": float(rank), "target": target}


def load_adapter(path: Path | str) -> Adapter:
    """Read an adapter (`{"state_dict", "meta"}`, a step checkpoint, or a bare state dict)."""
    path = Path(path)
    obj = safe_torch_load(path, what="LoRA adapter", fix="use an adapter_*.pt written by selvad or ComfyUI-SelVA")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        sd, meta = obj["state_dict"], dict(obj.get("meta") or {})
    elif isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        sd, meta = obj, {}
    else:
        raise AdapterError(f"{path}: not a LoRA adapter (expected a state dict or {{'state_dict', 'meta'}})")
    if not any(k.endswith(".lora_A") for k in sd):
        raise AdapterError(f"{path}: contains no lora_A/lora_B tensors")
    inferred = infer_meta(sd)
    for key, value in inferred.items():
        meta.setdefault(key, value)
    if meta.get("alpha") in (None, 0):
        meta["alpha"] = float(meta["rank"])
    real_rank = inferred["rank"]
    if int(meta["rank"]) != real_rank:
        raise AdapterError(f"{path}: meta says rank {meta['rank']} but the tensors have rank {real_rank}")
    return Adapter(state_dict=sd, meta=meta, path=path)


def apply_adapter(
    model: nn.Module,
    adapter: Adapter,
    *,
    strength: float = 1.0,
    variant: str | None = None,
    allow_other_variant: bool = False,
) -> list[str]:
    """Wrap `model` as the adapter's meta says, load its tensors, set `strength`.

    Refuses an adapter made for another variant (when both are known, unless
    `allow_other_variant`) and, always, any key or shape mismatch, so a partial load never
    happens silently. Returns the wrapped layer names.
    """
    src = str(adapter.path or "adapter")
    meta_variant = adapter.meta.get("variant")
    if variant and meta_variant and meta_variant != variant and not allow_other_variant:
        raise AdapterError(f"{src} was trained for variant {meta_variant!r}, not {variant!r}; use "
                           f"{meta_variant!r}, or load it anyway with --allow-other-variant (it "
                           "loads only when every tensor's shape matches)")
    if lora_layers(model):
        raise AdapterError("the model already carries a LoRA adapter; remove it first")
    names = apply_lora(
        model, rank=adapter.rank, alpha=adapter.alpha, targets=adapter.target, rslora=adapter.rslora
    )
    try:
        load_lora_state_dict(model, adapter.state_dict, source=src)
    except AdapterError:
        remove_lora(model)
        raise
    set_strength(model, strength)
    return names
