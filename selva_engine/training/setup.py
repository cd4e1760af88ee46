"""The phases of a training run before its first step, in the order `train()` calls them.

open_run -> extract_data -> find_resume -> prepare_data -> build_model -> resume_run ->
announce_start. Each reads nothing but its arguments and returns the record it builds (see
selva_engine.training.state). Keep the order: `build_model` seeds the global torch RNG (the
generator's initialisation and LoRA dropout draw from it), `resume_run` then restores it from
the checkpoint, and the events follow this order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from selva_engine.data.augment_file import read_augment_settings
from selva_engine.data.dataset import load_dataset
from selva_engine.data.extract import ExtractedClip, FeatureCache, extract_clips
from selva_engine.data.prepare_file import read_prepare_settings
from selva_engine.data.video_extract import add_video_clips
from selva_engine.device import resolve_device
from selva_engine.io import remove_temp_files
from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Conditions, Generator, load_generator
from selva_engine.model.lora import apply_lora, infer_meta, lora_parameters
from selva_engine.model.variants import get_variant
from selva_engine.outputs.checkpoint import find_latest, list_checkpoints, load_checkpoint
from selva_engine.training.acceleration import CompileTrial, compile_blocks
from selva_engine.training.loop import (
    BatchSampler,
    FixedLossProbe,
    StepRunner,
    TrainError,
    autocast_for,
    effective_precision,
    make_scheduler,
    store_frozen_in_compute_dtype,
)
from selva_engine.training.options import TrainConfig
from selva_engine.training.split import split_with_variants
from selva_engine.training.state import (
    ClipConditions,
    EventFn,
    EventLog,
    RunContext,
    RunState,
    TrainData,
    TrainParts,
    restore_checkpoint,
)
from selva_engine.weights.locate import resolve

__all__ = ["PREPROCESS_MODULES", "Resume", "announce_start", "build_model", "extract_data", "find_resume",
           "free_final_name", "open_run", "prepare_data", "reconcile_resume", "resume_run"]

# The generator's condition-preprocessing modules: a LoRA target inside one of them means
# the conditions change as the adapter trains and cannot be computed once.
PREPROCESS_MODULES = ("clip_input_proj", "sync_input_proj", "text_input_proj", "clip_cond_proj",
                      "text_cond_proj", "sync_pos_emb")
CONDITION_BATCH = 16  # clips per preprocessing call when the conditions are cached


class Resume(NamedTuple):
    """The step checkpoint a run resumes from."""

    path: Path
    checkpoint: dict[str, Any]


def open_run(cfg: TrainConfig, events: EventFn | None) -> RunContext:
    """Validate `cfg`, create the output directory and delete the temp files killed writes
    left in it (a "cleanup" event), pick device and precision (a fallback is a "warning"
    event) and resolve the variant's weight files. Raises TrainError on invalid options or
    an unavailable device, MissingWeightsError when weights are missing."""
    started = time.time()  # unix seconds; this run has written nothing yet
    problems = cfg.problems()
    if problems:
        raise TrainError("invalid training options: " + "; ".join(f"{k}: {m}" for k, m in problems))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(events, out_dir / "progress.jsonl")
    # no other writer works in a run's directory when the run starts (the daemon runs one
    # child per run and stops an orphan first), so every older temp file is a dead write's
    removed = remove_temp_files(out_dir, before=started)
    if removed:
        log.emit({"event": "cleanup", "removed": sorted(p.name for p in removed)})
    variant = get_variant(cfg.variant)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    precision = effective_precision(cfg.precision, device, log.warn)
    weights = resolve(cfg.selva_dir, variant.name)
    if not cfg.resume and (steps := list_checkpoints(out_dir)):
        raise TrainError(f"{out_dir} holds step checkpoints of another run ({steps[-1][1].name}); "
                         "resume it with --resume latest, or train into an empty --output_dir")
    prepare, bad = read_prepare_settings(cfg.data_dir, cfg.prepare_settings)
    for problem in bad:
        log.warn(f"[prepare] of dataset.toml not used: {problem}")
    augment, bad = read_augment_settings(cfg.data_dir, cfg.augment_settings)
    for problem in bad:
        log.warn(f"[augment] of dataset.toml not used: {problem}")
    return RunContext(cfg=cfg, out_dir=out_dir, variant=variant, weights=weights, device=device,
                      precision=precision, log=log, final_name=free_final_name(out_dir), prepare=prepare,
                      augment=augment)


def free_final_name(out_dir: Path) -> str:
    """adapter_final.pt, or the first free adapter_final_NNN.pt (001, 002, ...) when an earlier
    run in `out_dir` left one: a re-run never overwrites an adapter a user may be using."""
    if not (out_dir / "adapter_final.pt").exists():
        return "adapter_final.pt"
    n = 1
    while (out_dir / f"adapter_final_{n:03d}.pt").exists():
        n += 1
    return f"adapter_final_{n:03d}.pt"


def extract_data(ctx: RunContext, stop: threading.Event, codec_factory: Callable[[], Any] | None,
                 text_factory: Callable[[], Any] | None
                 ) -> tuple[list[ExtractedClip], dict[str, np.ndarray]] | None:
    """Scan the data directory and extract every usable clip through the feature cache
    (`cfg.cache_dir`, default `<output_dir>/.cache`), the sample's negative prompt too.

    With `[augment]` on, the training clips (the originals' split, `split_with_variants`)
    get their variants too; a held-out clip gets none.
    Emits a warning per dataset warning and skipped clip, then extract_start,
    extract_progress and extract_done. Returns (clips, {negative prompt: text features}),
    or None when `stop` was set meanwhile (what was encoded stays cached). Raises TrainError
    when no clip is usable.
    """
    cfg, log = ctx.cfg, ctx.log
    scan = load_dataset(cfg.data_dir, ctx.variant, collect=True, video=cfg.video_settings)
    cache = FeatureCache(cfg.cache_dir or ctx.out_dir / ".cache")
    add_video_clips(scan, ctx.variant, weights=ctx.weights, cache=cache, device=ctx.device,
                    progress=log.emit, stop=stop)
    if stop.is_set():
        return None
    for w in scan.warnings:
        log.warn(w)
    for p in scan.problems:
        log.warn(f"skipping clip: {p}")
    if cfg.exclude_clips:
        left_out = set(cfg.exclude_clips)
        for c in (c for c in scan.clips if c.stem in left_out):
            log.warn(f"skipping clip: {c.audio_path}: flagged by the dataset Inspector "
                     "(skip_rejected; see validation.toml)")
        scan.clips = [c for c in scan.clips if c.stem not in left_out]
    if not scan.clips:
        raise TrainError(f"{cfg.data_dir}: no usable clips (see the warnings above)")
    augment_clips = []
    if ctx.augment.enabled:  # the split of the originals, as prepare_data will make it
        train_idx, _ = split_with_variants(scan.clips, cfg.val_clips, cfg.seed)
        augment_clips = [scan.clips[i] for i in train_idx]
    log.emit({"event": "extract_start", "clips": len(scan.clips), "prepare": list(ctx.prepare.steps()),
              "variants": len(augment_clips) * ctx.augment.variants if ctx.augment.enabled else 0})
    clips, extra_text, stats = extract_clips(
        scan.clips, ctx.variant, weights=ctx.weights, cache=cache, device=ctx.device,
        extra_prompts=[cfg.sample_negative_prompt] if cfg.sample_negative_prompt else [],
        progress=log.emit, codec_factory=codec_factory, text_factory=text_factory, stop=stop,
        prepare=ctx.prepare, augment=ctx.augment, augment_clips=augment_clips,
    )
    if stop.is_set():
        return None
    log.emit({"event": "extract_done", **stats.to_dict()})
    return clips, extra_text


def find_resume(cfg: TrainConfig, out_dir: Path) -> Resume | None:
    """The step checkpoint `cfg.resume` names: "latest" = the newest loadable one in
    `out_dir` (None when there is none yet), a path = that file (UnsafeFileError when it
    is not a step checkpoint); None for a fresh run."""
    if not cfg.resume:
        return None
    if cfg.resume == "latest":
        found = find_latest(out_dir)
        return Resume(*found) if found else None
    path = Path(cfg.resume)
    return Resume(path, load_checkpoint(path))


def checkpoint_options(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The LoRA options a step checkpoint was trained with (ours or ComfyUI-SelVA's): from its
    meta, else from its tensors; init_mode is "pissa" when it carries residual bases."""
    meta, sd = dict(ckpt.get("meta") or {}), ckpt.get("state_dict") or {}
    inferred = infer_meta(sd)
    rank = int(meta.get("rank") or inferred.get("rank") or 0) or None
    target = meta.get("target") or inferred.get("target")
    residual = any(k.endswith((".linear.weight", ".linear.bias")) for k in sd)
    return {"rank": rank, "alpha": float(meta.get("alpha") or rank) if rank else None,
            "target": ([target] if isinstance(target, str) else list(target)) if target else None,
            "rslora": bool(meta["use_rslora"]) if "use_rslora" in meta else None,
            "init_mode": "pissa" if residual else str(meta.get("init_mode") or "standard"),
            **_optimizer_options(ckpt.get("optimizer"))}


def _optimizer_options(optimizer: Any) -> dict[str, float | None]:
    """The base learning rate and weight decay of a checkpoint's optimizer state (its first
    parameter group: the LoRA A matrices), which loading that state brings back whatever
    the options say; None where the state does not hold them."""
    groups = optimizer.get("param_groups") if isinstance(optimizer, dict) else None
    group = groups[0] if isinstance(groups, list) and groups and isinstance(groups[0], dict) else {}
    lr, decay = group.get("initial_lr", group.get("lr")), group.get("weight_decay")
    return {"lr": float(lr) if isinstance(lr, (int, float)) else None,
            "weight_decay": float(decay) if isinstance(decay, (int, float)) else None}


def reconcile_resume(ctx: RunContext, resume: Resume | None) -> RunContext:
    """A resumed run continues as its checkpoint was trained: rank, alpha, target, rsLoRA,
    init mode, and the learning rate and weight decay its optimizer state brings back, come
    from the checkpoint (a "warning" event says which), so the adapter meta records what was
    really trained with. An option set to something else than its default that disagrees is
    a TrainError naming both values."""
    if resume is None:
        return ctx
    cfg, default = ctx.cfg, TrainConfig()
    found = checkpoint_options(resume.checkpoint)
    if found["init_mode"] == "pissa" and not any(
            k.endswith(".linear.weight") for k in resume.checkpoint.get("state_dict", {})):
        raise TrainError(f"{resume.path}: a PiSSA checkpoint without its residual base weights "
                         "cannot be resumed; start a fresh run")
    changes, conflicts = {}, []
    for name, value in found.items():  # rank before alpha: alpha defaults to the rank
        mine = cfg.alpha if name == "alpha" else getattr(cfg, name)
        mine = list(mine) if name == "target" else mine
        if name == "alpha" and mine is None:
            mine_effective = float(changes.get("rank", cfg.rank))
            if value is None or mine_effective == value:
                continue
        elif value is None or mine == value or (name == "alpha" and float(mine) == value):
            continue
        unset = mine is None if name == "alpha" else mine == (
            list(default.target) if name == "target" else getattr(default, name))
        if unset:
            changes[name] = tuple(value) if name == "target" else value
        else:
            conflicts.append(f"{name} {mine!r} but the checkpoint was trained with {value!r}")
    if conflicts:
        raise TrainError(f"cannot resume {resume.path}: " + "; ".join(conflicts) +
                         " (leave these options out to continue it as it was trained, or start "
                         "a fresh run)")
    if changes:
        ctx.log.warn(f"resuming {resume.path.name} as it was trained: " +
                     ", ".join(f"{k} {v!r}" for k, v in changes.items()))
    if changes.get("init_mode", cfg.init_mode) == "pissa":
        changes["lora_dropout"] = 0.0
    return replace(ctx, cfg=replace(cfg, **changes)) if changes else ctx


def prepare_data(ctx: RunContext, clips: list[ExtractedClip], extra_text: dict[str, np.ndarray],
                 resume: Resume | None) -> TrainData:
    """Split the clips into training and validation clips, on the originals, with each
    `[augment]` variant beside its original (`split_with_variants`; a resumed run keeps its
    checkpoint's split; TrainError when the clips changed since) and put every clip's
    tensors on the device once, so no step copies them from the host."""
    cfg, device = ctx.cfg, ctx.device
    stems = [c.stem for c in clips]
    keep = not ctx.augment.enabled or ctx.augment.keep_originals
    train_idx, val_idx = split_with_variants(clips, cfg.val_clips, cfg.seed, keep_originals=keep)
    if resume and "split" in resume.checkpoint:
        split = resume.checkpoint["split"]
        if sorted(split["train"] + split["val"]) != sorted(stems[i] for i in train_idx + val_idx):
            raise TrainError(f"{resume.path}: the dataset changed since this checkpoint "
                             "(clips differ, or their [augment] variants); start a fresh run instead "
                             "of resuming")
        train_idx = [stems.index(s) for s in split["train"]]
        val_idx = [stems.index(s) for s in split["val"]]

    def stack(attr: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(c, attr) for c in clips])).to(device)

    negative = cfg.sample_negative_prompt
    return TrainData(
        clips=clips, train_idx=train_idx, val_idx=val_idx,
        lat_mean=stack("latent_mean"), lat_std=stack("latent_std"),
        clip_f=stack("clip"), sync_f=stack("sync"), text_f=stack("text"),
        negative_text=torch.from_numpy(extra_text[negative])[None].to(device) if negative else None,
    )


def build_model(ctx: RunContext, data: TrainData, fresh: bool = True) -> TrainParts:
    """Seed the global torch RNG with `cfg.seed`, load the generator, wrap the target layers
    in LoRA (fp32, initialised from its own seeded generator), store the frozen weights in
    the compute dtype, and build AdamW (LoRA+ groups), the LR schedule, the grad scaler, the
    conditions, the batch sampler, the step RNGs (seed + 1: timesteps, seed + 2: noise), the
    loss probe and the step runner. A `fresh` run initialises LoRA as `cfg.init_mode` says
    (PiSSA: from the fp32 base, before the frozen weights change dtype); a resumed one gets
    its weights and residual bases from the checkpoint. Raises NoTargetsError when no layer
    matches."""
    cfg, device = ctx.cfg, ctx.device
    torch.manual_seed(cfg.seed)
    model = load_generator(ctx.weights.generator, ctx.variant, device=device)
    pissa = cfg.init_mode == "pissa"
    lora_layers = apply_lora(model, rank=cfg.rank, alpha=cfg.effective_alpha, targets=list(cfg.target),
                             rslora=cfg.rslora, dropout=0.0 if pissa else cfg.lora_dropout,
                             dtype=torch.float32, generator=torch.Generator().manual_seed(cfg.seed),
                             init_mode=cfg.init_mode if fresh else "standard", keep_original=False)
    model.train()
    # frozen Linear/Conv weights stored in the autocast dtype: the same numbers as autocast's
    # per-step casts, without them (and half the memory for those weights)
    store_frozen_in_compute_dtype(model, ctx.precision)
    params_a, params_b = lora_parameters(model)
    optimizer = torch.optim.AdamW(
        [{"params": params_a, "lr": cfg.lr}, {"params": params_b, "lr": cfg.lr * cfg.lora_plus_ratio}],
        lr=cfg.lr, weight_decay=cfg.weight_decay,
        # one fused kernel for all LoRA tensors instead of ~10 small ops per tensor (the
        # per-tensor loop costs more than the whole step's matmuls on a small model)
        fused=device.type in ("cuda", "cpu"),
    )
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=ctx.precision == "fp16")
    autocast = autocast_for(device, ctx.precision)
    conditions = _clip_conditions(model, data, lora_layers, autocast)
    fm = FlowMatching()
    sampler = BatchSampler(data.train_idx, cfg.batch_size, seed=cfg.seed)
    gen_t = torch.Generator().manual_seed(cfg.seed + 1)  # timesteps
    gen_noise = torch.Generator().manual_seed(cfg.seed + 2)  # x0 and posterior eps
    runner = StepRunner(model, fm, cfg, lat_mean=data.lat_mean, lat_std=data.lat_std, conditions=conditions,
                        autocast=autocast, scaler=scaler, optimizer=optimizer, scheduler=scheduler,
                        params=params_a + params_b, gen_t=gen_t, gen_noise=gen_noise)
    _accelerate(ctx, model, runner)
    return TrainParts(model=model, lora_layers=lora_layers, params=params_a + params_b, optimizer=optimizer,
                      scheduler=scheduler, scaler=scaler, autocast=autocast, conditions=conditions, fm=fm,
                      sampler=sampler, gen_t=gen_t, gen_noise=gen_noise,
                      probe=FixedLossProbe(fm, seed=cfg.seed), runner=runner)


def _accelerate(ctx: RunContext, model: Generator, runner: StepRunner) -> None:
    """The speed options: activation checkpointing of the blocks, and torch.compile of them
    with the first micro-step as a trial that falls back to eager (acceleration.py)."""
    model.gradient_checkpointing = ctx.cfg.gradient_checkpointing
    if ctx.cfg.compile:
        compile_blocks(model)
        runner.first_step = CompileTrial(model, ctx.log.emit, ctx.log.warn)


def _clip_conditions(model: Generator, data: TrainData, lora_layers: list[str], autocast: Any) -> ClipConditions:
    """The conditions source of the run: every clip's conditions computed once (in batches
    of CONDITION_BATCH clips) unless a LoRA layer sits in the preprocessing modules."""
    if any(n.startswith(PREPROCESS_MODULES) for n in lora_layers):
        return ClipConditions(model, data, None)
    d, n = data, CONDITION_BATCH
    with torch.no_grad(), autocast:
        cached = Conditions.cat([
            model.preprocess_conditions(d.clip_f[i : i + n], d.sync_f[i : i + n], d.text_f[i : i + n])
            for i in range(0, len(d.clips), n)
        ])
    return ClipConditions(model, data, cached)


def resume_run(ctx: RunContext, parts: TrainParts, resume: Resume | None) -> RunState:
    """The run's starting state: fresh at step 0, or, when resuming, restored from the
    checkpoint together with `parts` (weights, optimizer, RNGs, ...; a "resumed" event).
    progress.jsonl loses its records of later steps (and a torn last line)."""
    state = RunState()
    if resume:
        restore_checkpoint(resume.checkpoint, resume.path, parts, state, ctx.device)
        ctx.log.emit({"event": "resumed", "step": state.step, "checkpoint": str(resume.path)})
    ctx.log.keep_until(state.step)  # the steps after it are trained (and logged) again
    return state


def announce_start(ctx: RunContext, data: TrainData, parts: TrainParts, state: RunState) -> None:
    """Emit train_start (and a warning first when a resumed run has no step left to train).
    Reads state.step only."""
    cfg = ctx.cfg
    if state.step >= cfg.steps:
        ctx.log.warn(f"checkpoint step {state.step} already reaches steps = {cfg.steps}; nothing to train")
    ctx.log.emit({"event": "train_start", "step": state.step, "steps": cfg.steps,
                  "train_clips": len(data.train_idx), "val_clips": len(data.val_idx),
                  "precision": ctx.precision, "device": str(ctx.device), "lora_layers": len(parts.lora_layers),
                  "trainable_params": sum(p.numel() for p in parts.params)})
