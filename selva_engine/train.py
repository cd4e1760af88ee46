"""The LoRA trainer: dataset -> cached extraction -> training loop -> adapters and reports.

`train(cfg)` reads top to bottom: resolve weights and data, extract (cached), build the
generator with LoRA, then loop over micro-batches; every `save_every` steps (and at the
end or on a stop request) it writes a step checkpoint, a sample, the validation losses,
plots and meta.json. Progress goes to `progress.jsonl` and to the `events` callback as
plain dicts (the daemon's worker reads them as JSON lines).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import report
from .checkpoint import checkpoint_name, find_latest, load_checkpoint, save_checkpoint
from .data import load_dataset
from .extract import FeatureCache, extract_clips
from .flow import FlowMatching
from .lora import apply_lora, lora_parameters, lora_state_dict, save_adapter
from .nn.generator import Conditions, load_generator
from .options import TrainConfig, resolve_device
from .recommend import Candidate, recommend
from .trainloop import (
    BatchSampler,
    FixedLossProbe,
    StepRunner,
    Stopper,
    TrainError,
    adapter_meta,
    append_jsonl,
    autocast_for,
    effective_precision,
    make_scheduler,
    overfitting,
    split_clips,
    store_frozen_in_compute_dtype,
)
from .variants import get_variant

__all__ = ["TrainError", "TrainResult", "train"]

EventFn = Callable[[dict], None]
PREPROCESS_MODULES = ("clip_input_proj", "sync_input_proj", "text_input_proj", "clip_cond_proj",
                      "text_cond_proj", "sync_pos_emb")


@dataclass
class TrainResult:
    """Outcome: "done" or "interrupted", the last step, and the files written."""

    status: str
    step: int
    output_dir: Path
    final_adapter: Path | None = None
    best_adapter: Path | None = None
    last_checkpoint: Path | None = None
    history: dict[str, Any] = field(default_factory=dict)


def train(
    cfg: TrainConfig,
    *,
    events: EventFn | None = None,
    stop: threading.Event | None = None,
    install_signal_handlers: bool = True,
    codec_factory: Callable[[], Any] | None = None,
    text_factory: Callable[[], Any] | None = None,
) -> TrainResult:
    """Train one LoRA adapter as `cfg` says; see the module docstring for outputs.

    Raises TrainError / DatasetError / MissingWeightsError with messages that name what was
    looked for and the fix. Returns status "interrupted" (after saving a checkpoint of the
    current step) when `stop` is set or SIGTERM/SIGINT arrives.
    """
    stopper = Stopper(stop, install_signal_handlers)
    try:
        return _train(cfg, stopper, events, codec_factory, text_factory)
    finally:
        stopper.restore()


def _train(cfg: TrainConfig, stopper: Stopper, events: EventFn | None,
           codec_factory: Callable[[], Any] | None, text_factory: Callable[[], Any] | None) -> TrainResult:
    """The body of `train` (the stop/signal handling is installed by the caller)."""
    problems = cfg.problems()
    if problems:
        raise TrainError("invalid training options: " + "; ".join(f"{k}: {m}" for k, m in problems))
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress_path = out_dir / "progress.jsonl"

    def emit(event: dict) -> None:
        event = {"time": round(time.time(), 3), **event}
        if events:
            events(event)

    def warn(message: str) -> None:
        emit({"event": "warning", "message": message})

    from .weights import resolve  # resolves and checks every weight file of the variant

    variant = get_variant(cfg.variant)
    try:
        device = resolve_device(cfg.device)
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    precision = effective_precision(cfg.precision, device, warn)
    weights = resolve(cfg.selva_dir, variant.name)

    # ---------------------------------------------------------------- data + extraction
    scan = load_dataset(cfg.data_dir, variant, collect=True)
    for w in scan.warnings:
        warn(w)
    for p in scan.problems:
        warn(f"skipping clip: {p}")
    if not scan.clips:
        raise TrainError(f"{cfg.data_dir}: no usable clips (see the warnings above)")
    cache = FeatureCache(cfg.cache_dir or out_dir / ".cache")
    emit({"event": "extract_start", "clips": len(scan.clips)})
    clips, extra_text, stats = extract_clips(
        scan.clips, variant, weights=weights, cache=cache, device=device,
        extra_prompts=[cfg.sample_negative_prompt] if cfg.sample_negative_prompt else [],
        progress=emit, codec_factory=codec_factory, text_factory=text_factory, stop=stopper.event,
    )
    if stopper.requested:  # stopped during extraction: what was encoded stays cached
        emit({"event": "interrupted", "step": 0, "checkpoint": None, "signal": stopper.signal_name,
              "stage": "extraction"})
        return TrainResult(status="interrupted", step=0, output_dir=out_dir)
    emit({"event": "extract_done", **stats.to_dict()})

    resume_ckpt, resume_path = None, None
    if cfg.resume:
        if cfg.resume == "latest":
            found = find_latest(out_dir)
            if found:
                resume_path, resume_ckpt = found
        else:
            resume_path = Path(cfg.resume)
            resume_ckpt = load_checkpoint(resume_path)
    stems = [c.stem for c in clips]
    if resume_ckpt and "split" in resume_ckpt:
        split = resume_ckpt["split"]
        if sorted(split["train"] + split["val"]) != sorted(stems):
            raise TrainError(f"{resume_path}: the dataset changed since this checkpoint "
                             "(clips differ); start a fresh run instead of resuming")
        train_idx = [stems.index(s) for s in split["train"]]
        val_idx = [stems.index(s) for s in split["val"]]
    else:
        train_idx, val_idx = split_clips(clips, cfg.val_clips, cfg.seed)

    # ---------------------------------------------------------------- model + LoRA
    torch.manual_seed(cfg.seed)
    model = load_generator(weights.generator, variant, device=device)
    wrapped = apply_lora(model, rank=cfg.rank, alpha=cfg.effective_alpha, targets=list(cfg.target),
                         rslora=cfg.rslora, dropout=cfg.lora_dropout, dtype=torch.float32,
                         generator=torch.Generator().manual_seed(cfg.seed))
    model.train()
    # frozen Linear/Conv weights stored in the autocast dtype: the same numbers as autocast's
    # per-step casts, without them (and half the memory for those weights)
    store_frozen_in_compute_dtype(model, precision)
    params_a, params_b = lora_parameters(model)
    optimizer = torch.optim.AdamW(
        [{"params": params_a, "lr": cfg.lr}, {"params": params_b, "lr": cfg.lr * cfg.lora_plus_ratio}],
        lr=cfg.lr, weight_decay=cfg.weight_decay,
    )
    scheduler = make_scheduler(optimizer, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    autocast = autocast_for(device, precision)

    # All clip tensors live on the device once (no per-step host->device copies).
    def stack(attr: str, idx: list[int]) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(clips[i], attr) for i in idx])).to(device)

    all_idx = list(range(len(clips)))
    lat_mean, lat_std = stack("latent_mean", all_idx), stack("latent_std", all_idx)
    clip_f, sync_f, text_f = stack("clip", all_idx), stack("sync", all_idx), stack("text", all_idx)
    # Conditions depend only on frozen modules unless a LoRA target sits inside them: then
    # they are computed once for every clip instead of at every step.
    cache_conditions = not any(n.startswith(PREPROCESS_MODULES) for n in wrapped)

    def conditions(idx: torch.Tensor) -> Conditions:
        if cached is not None:
            return cached.index(idx)
        return model.preprocess_conditions(clip_f[idx], sync_f[idx], text_f[idx])

    cached = None
    if cache_conditions:
        with torch.no_grad(), autocast:
            cached = Conditions.cat([
                model.preprocess_conditions(clip_f[i : i + 16], sync_f[i : i + 16], text_f[i : i + 16])
                for i in range(0, len(clips), 16)
            ])

    fm = FlowMatching()
    sampler = BatchSampler(train_idx, cfg.batch_size, seed=cfg.seed)
    gen_t = torch.Generator().manual_seed(cfg.seed + 1)  # timesteps
    gen_noise = torch.Generator().manual_seed(cfg.seed + 2)  # x0 and posterior eps
    probe = FixedLossProbe(fm, seed=cfg.seed)

    history: dict[str, list] = {"step": [], "loss": [], "grad_norm": [], "lr": [], "ckpt_step": [],
                                "val_loss": [], "train_fixed_loss": [], "metrics": []}
    best: dict[str, Any] = {}
    step = 0
    if resume_ckpt:
        from .lora import load_lora_state_dict

        load_lora_state_dict(model, resume_ckpt["state_dict"], source=str(resume_path))
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        scheduler.load_state_dict(resume_ckpt["scheduler"])
        if "scaler" in resume_ckpt and resume_ckpt["scaler"]:
            scaler.load_state_dict(resume_ckpt["scaler"])
        step = int(resume_ckpt["step"])
        rng = resume_ckpt.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], device)
        if "t" in rng:
            gen_t.set_state(rng["t"])
            gen_noise.set_state(rng["noise"])
        if "sampler" in resume_ckpt:
            sampler.load_state_dict(resume_ckpt["sampler"])
        history.update({k: list(v) for k, v in resume_ckpt.get("history", {}).items()})
        best = dict(resume_ckpt.get("best", {}))
        emit({"event": "resumed", "step": step, "checkpoint": str(resume_path)})
    if step >= cfg.steps:
        warn(f"checkpoint step {step} already reaches steps = {cfg.steps}; nothing to train")

    n_train, n_val = len(train_idx), len(val_idx)
    emit({"event": "train_start", "step": step, "steps": cfg.steps, "train_clips": n_train,
          "val_clips": n_val, "precision": precision, "device": str(device),
          "lora_layers": len(wrapped), "trainable_params": sum(p.numel() for p in params_a + params_b)})

    from .sweep import system_info

    system = system_info()
    codec_holder: dict[str, Any] = {}
    run_flags: dict[str, Any] = {"overfitting": False, "recommendation": None}
    sample_idx = train_idx[0]
    neg_text = (torch.from_numpy(extra_text[cfg.sample_negative_prompt])[None].to(device)
                if cfg.sample_negative_prompt else None)

    def drain(at_step: int) -> None:
        """Read the losses and grad norms waiting on the device into the log window."""
        losses, norms = runner.flush(at_step)
        window_loss.extend(losses)
        window_gn.extend(norms)

    def write_checkpoint(at_step: int, final: bool) -> Path:
        """Checkpoint + sample + fixed-noise losses + plots + meta.json for `at_step`."""
        drain(at_step)  # the losses still on the device are checked first: a diverged run saves nothing
        meta = adapter_meta(cfg, variant.name, at_step, precision, n_train, n_val)
        model.eval()
        with torch.no_grad(), autocast:
            val_loss = probe.loss(model, conditions, lat_mean, val_idx) if val_idx else None
            train_fixed = probe.loss(model, conditions, lat_mean, train_idx[:8])
        sample_path, metrics = _write_sample(at_step)
        model.train()
        history["ckpt_step"].append(at_step)
        history["val_loss"].append(val_loss if val_loss is not None else float("nan"))
        history["train_fixed_loss"].append(train_fixed)
        history["metrics"].append(json.dumps(metrics))
        ckpt_path = out_dir / checkpoint_name(at_step)
        state = lora_state_dict(model)
        if val_loss is not None and (not best or val_loss < best["val_loss"]):
            best.update({"step": at_step, "val_loss": val_loss, "file": "adapter_best.pt"})
            save_adapter(out_dir / "adapter_best.pt", state, {**meta, "best_val_loss": val_loss})
        rng = {"torch": torch.get_rng_state(), "t": gen_t.get_state(), "noise": gen_noise.get_state()}
        if device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(device)
        save_checkpoint(ckpt_path, {
            "state_dict": state, "meta": meta, "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": at_step, "rng": rng,
            "sampler": sampler.state_dict(), "history": history, "best": best,
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "config": json.dumps(cfg.to_dict()), "split": {"train": [stems[i] for i in train_idx],
                                                             "val": [stems[i] for i in val_idx]},
        })
        if overfitting(history["val_loss"], history["train_fixed_loss"], cfg.overfit_patience):
            run_flags["overfitting"] = True
            warn(f"validation loss rose for {cfg.overfit_patience} checkpoints in a row while the "
                 "training loss fell: the adapter is overfitting; prefer adapter_best.pt")
        report.write_loss_plots(out_dir, history["step"], history["loss"], {
            "train clips (fixed noise)": (history["ckpt_step"], history["train_fixed_loss"]),
            **({"held-out clips": (history["ckpt_step"], history["val_loss"])} if val_idx else {}),
        })
        run_flags["recommendation"] = recommend(
            [Candidate(checkpoint_name(s), str(out_dir / checkpoint_name(s)), s,
                       None if v != v else v, tf, json.loads(m))
             for s, v, tf, m in zip(history["ckpt_step"], history["val_loss"],
                                    history["train_fixed_loss"], history["metrics"], strict=True)],
            reference_hf=codec_holder["reference_metrics"].get("hf_energy_ratio"),
            overfitting=run_flags["overfitting"],
        ).to_dict()
        report.write_meta(out_dir, {**meta, "best": best or None, "final": final,
                                    "recommendation": run_flags["recommendation"],
                                    "sample_clip": stems[sample_idx], "system": system,
                                    "sample_reference_metrics": codec_holder["reference_metrics"],
                                    "val_clip_stems": [stems[i] for i in val_idx],
                                    "checkpoints": [checkpoint_name(s) for s in history["ckpt_step"]],
                                    "metrics": {str(s): json.loads(m) for s, m in
                                                zip(history["ckpt_step"], history["metrics"], strict=True)}})
        record = {"event": "checkpoint", "step": at_step, "path": str(ckpt_path),
                  "sample": str(sample_path), "val_loss": val_loss, "train_fixed_loss": train_fixed,
                  "metrics": metrics}
        append_jsonl(progress_path, {"time": round(time.time(), 3), **record})
        report.write_metric_plot(out_dir / "metrics.png", history["ckpt_step"],
                                 [json.loads(m) for m in history["metrics"]])
        emit(record)
        return ckpt_path

    def _write_sample(at_step: int) -> tuple[Path, dict]:
        from .audio import load_audio_codec
        from .audio_io import load_audio
        from .metrics import compute_metrics
        from .sample import decode_to_audio, generate_latents

        if "codec" not in codec_holder:
            codec_holder["codec"] = load_audio_codec(variant, weights, device=device,
                                                     need_encoder=False, need_vocoder=True)
        i = torch.tensor([sample_idx], device=device)
        noise = torch.randn(1, *lat_mean.shape[1:], generator=torch.Generator().manual_seed(cfg.seed + 3))
        with autocast:
            lat = generate_latents(model, clip_f[i], sync_f[i], text_f[i], noise=noise.to(device),
                                   negative_text=neg_text, cfg=cfg.sample_cfg, steps=cfg.sample_steps)
        wave = decode_to_audio(codec_holder["codec"], lat)[0].float().cpu().numpy()
        wave = report.loudness_normalize(wave)
        seq = variant.sequence()
        path = report.write_wav(out_dir / f"sample_step{at_step:05d}.wav", wave, seq.sampling_rate)
        ref = load_audio(clips[sample_idx].audio_path, seq.sampling_rate, seq.num_audio_frames)
        metrics = compute_metrics(wave, seq.sampling_rate, reference=ref).to_dict()
        if "reference_metrics" not in codec_holder:
            codec_holder["reference_metrics"] = compute_metrics(ref, seq.sampling_rate).to_dict()
        return path, metrics

    # ---------------------------------------------------------------- the loop
    status, last_ckpt = "done", None
    window_loss, window_gn, window_start = [], [], time.monotonic()
    loop_start_step = step
    runner = StepRunner(model, fm, cfg, lat_mean=lat_mean, lat_std=lat_std, conditions=conditions,
                        autocast=autocast, scaler=scaler, optimizer=optimizer, scheduler=scheduler,
                        params=params_a + params_b, gen_t=gen_t, gen_noise=gen_noise)
    # the loop (a stop request is checked before every step)
    while step < cfg.steps:
        if stopper.requested:
            status = "interrupted"
            break
        runner.micro_step(sampler.next_batch())
        step += 1
        if step % cfg.grad_accum == 0 or step == cfg.steps:
            runner.optimizer_step()
        if step % cfg.log_every == 0 or step == cfg.steps:
            drain(step)
            elapsed = time.monotonic() - window_start
            rate = len(window_loss) * cfg.batch_size / max(elapsed, 1e-9)
            mean_loss = float(np.mean(window_loss))
            history["step"].append(step)
            history["loss"].append(mean_loss)
            history["grad_norm"].append(float(np.mean(window_gn)) if window_gn else float("nan"))
            history["lr"].append(optimizer.param_groups[0]["lr"])
            line = {"event": "progress", "step": step, "steps": cfg.steps, "loss": mean_loss,
                    "smoothed_loss": report.ema(history["loss"])[-1],
                    "lr": history["lr"][-1], "grad_norm": history["grad_norm"][-1],
                    "samples_per_s": rate,
                    "eta_s": (cfg.steps - step) * cfg.batch_size / max(rate, 1e-9)}
            append_jsonl(progress_path, {"time": round(time.time(), 3), **line})
            emit(line)
            window_loss, window_gn, window_start = [], [], time.monotonic()
        if step % cfg.save_every == 0 or step == cfg.steps:
            last_ckpt = write_checkpoint(step, final=step == cfg.steps)
    if status == "interrupted":
        # save the current step unless it was just saved or nothing was trained yet
        if step > loop_start_step and (last_ckpt is None or last_ckpt.name != checkpoint_name(step)):
            last_ckpt = write_checkpoint(step, final=False)
        emit({"event": "interrupted", "step": step,
              "checkpoint": str(last_ckpt) if last_ckpt else None, "signal": stopper.signal_name})

    result = TrainResult(status=status, step=step, output_dir=out_dir, last_checkpoint=last_ckpt,
                         history=history)
    if status == "done":
        if last_ckpt is None:  # resumed at the end: still produce every final output
            last_ckpt = write_checkpoint(step, final=True)
            result.last_checkpoint = last_ckpt
        meta = adapter_meta(cfg, variant.name, step, precision, n_train, n_val)
        result.final_adapter = save_adapter(out_dir / "adapter_final.pt", lora_state_dict(model), meta)
        if best:
            result.best_adapter = out_dir / "adapter_best.pt"
        rec = run_flags["recommendation"] or {}
        emit({"event": "recommendation", **rec})
        emit({"event": "done", "step": step, "adapter": str(result.final_adapter),
              "best": best or None, "recommended": rec.get("id")})
    codec = codec_holder.pop("codec", None)
    if codec is not None and hasattr(codec, "free"):
        codec.free()
    if status == "done" and cfg.eval_clips > 0:
        del model, optimizer, cached  # the evaluator loads its own copy of the weights
        if device.type == "cuda":
            torch.cuda.empty_cache()
        _evaluate_run(cfg, out_dir, emit)
    return result


def _evaluate_run(cfg: TrainConfig, out_dir: Path, emit: EventFn) -> None:
    """Evaluate every checkpoint of the finished run into `<out_dir>/eval/` (issue: [eval])."""
    from .evaluate import evaluate, specs_from_run_dir

    emit({"event": "eval_start", "clips": cfg.eval_clips})
    summary = evaluate(
        data_dir=Path(cfg.data_dir), output_dir=out_dir / "eval", variant=cfg.variant,
        selva_dir=cfg.selva_dir, adapters=specs_from_run_dir(out_dir), clips=cfg.eval_clips,
        steps=cfg.eval_steps, seed=cfg.seed, cfg=cfg.eval_cfg, device=cfg.device,
        log=lambda message: emit({"event": "eval_progress", "message": message}),
    )
    emit({"event": "eval_done", "summary": str(out_dir / "eval" / "eval_summary.json"),
          "recommendation": summary["recommendation"]})
