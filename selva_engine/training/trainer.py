"""The LoRA trainer: dataset -> cached extraction -> training loop -> adapters and reports.

`_train` below is the whole run as a sequence of phases, read top to bottom:

    open_run        options, output directory, device, precision, weight files
    extract_data    scan the dataset, encode what the feature cache lacks
    find_resume     the step checkpoint to continue from, if any
    reconcile_resume  a resume continues with its checkpoint's rank, alpha, target, rsLoRA
                    and init mode (PiSSA or standard)
    prepare_data    train/validation split, clip tensors on the device
    prepare_auditions  the audition videos' features (selva_engine.training.audition)
    build_model     generator + LoRA, optimizer, schedule, RNGs, step runner
    resume_run      step 0, or everything restored from the step checkpoint
    announce_start  the "train_start" event
    run_steps       the step loop; every `save_every` steps (and at the end or on a stop
                    request) a checkpoint: step checkpoint, sample, validation losses,
                    plots and meta.json (selva_engine.training.checkpointing)
    finish          final adapter (adapter_final.pt, or _NNN when a re-run would overwrite
                    one), recommendation and "done"
    operate         optional: spectral surgery into adapter_final_surgery.pt
    evaluate_run    optional: every checkpoint evaluated on `eval_clips` clips

The run's records live in selva_engine.training.state: RunContext (fixed), TrainData, TrainParts
(model and what steps it) and RunState (everything that changes). Progress goes to
`progress.jsonl` and to the `events` callback as plain dicts (the daemon's worker reads
them as JSON lines).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_engine.evaluation.evaluate import evaluate, specs_from_run_dir
from selva_engine.io import DiskFullError, is_disk_full
from selva_engine.model.lora import lora_state_dict, save_adapter
from selva_engine.outputs import report
from selva_engine.outputs.checkpoint import checkpoint_name
from selva_engine.training.audition import prepare_auditions
from selva_engine.training.checkpointing import Checkpointer
from selva_engine.training.loop import Stopper, TrainError
from selva_engine.training.options import TrainConfig
from selva_engine.training.setup import (
    announce_start,
    build_model,
    extract_data,
    find_resume,
    open_run,
    prepare_data,
    reconcile_resume,
    resume_run,
)
from selva_engine.training.state import (
    EventFn,
    EventLog,
    RunContext,
    RunState,
    TrainData,
    TrainParts,
)
from selva_engine.training.surgery import spectral_surgery

__all__ = ["TrainError", "TrainResult", "train"]


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
    looked for and the fix, and DiskFullError when a write finds no space or a checkpoint
    would not fit (the newest complete checkpoint stays the resume point). Returns status
    "interrupted" (after saving a checkpoint of the current step) when `stop` is set or
    SIGTERM/SIGINT arrives.
    """
    stopper = Stopper(stop, install_signal_handlers)
    try:
        return _train(cfg, stopper, events, codec_factory, text_factory)
    except OSError as exc:  # a write outside selva_engine.io (a library's) on a full disk
        if is_disk_full(exc) and not isinstance(exc, DiskFullError):
            where = Path(os.fsdecode(exc.filename)).parent if isinstance(exc.filename, (str, bytes)) \
                else Path(cfg.output_dir)
            raise DiskFullError(where) from exc
        raise
    finally:
        stopper.restore()


def _train(cfg: TrainConfig, stopper: Stopper, events: EventFn | None,
           codec_factory: Callable[[], Any] | None, text_factory: Callable[[], Any] | None) -> TrainResult:
    """The body of `train` (the stop/signal handling is installed by the caller)."""
    ctx = open_run(cfg, events)
    extracted = extract_data(ctx, stopper.event, codec_factory, text_factory)
    if extracted is None:  # stopped during extraction: what was encoded stays cached
        ctx.log.emit({"event": "interrupted", "step": 0, "checkpoint": None,
                      "signal": stopper.signal_name, "stage": "extraction"})
        return TrainResult(status="interrupted", step=0, output_dir=ctx.out_dir)
    clips, extra_text = extracted
    resume = find_resume(cfg, ctx.out_dir)
    ctx = reconcile_resume(ctx, resume)  # a resume continues as its checkpoint was trained
    data = prepare_data(ctx, clips, extra_text, resume)
    i = data.sample_idx  # auditions are heard with the sample clip's prompt
    auditions = prepare_auditions(ctx, data.clips[i].prompt, data.text_f[i:i + 1])
    # seeds the global RNG: every random draw follows from here
    parts = build_model(ctx, data, fresh=resume is None)
    state = resume_run(ctx, parts, resume)
    announce_start(ctx, data, parts, state)
    checkpointer = Checkpointer(ctx, data, auditions)
    run_steps(ctx, parts, state, checkpointer, stopper)
    result = finish(ctx, parts, state, checkpointer)
    if result.status == "done" and ctx.cfg.spectral_surgery != "off":
        operate(ctx, data, parts, state, checkpointer.meta(state.step))
    del parts, data, checkpointer  # the evaluator loads its own copy of the weights
    if result.status == "done" and ctx.cfg.eval_clips > 0:
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        evaluate_run(ctx.cfg, ctx.out_dir, ctx.log)
    return result


def run_steps(ctx: RunContext, parts: TrainParts, state: RunState, checkpointer: Checkpointer,
              stopper: Stopper) -> None:
    """Train from state.step up to `cfg.steps` micro-batches, checking for a stop request
    before each. Optimizer step every `grad_accum` micro-batches, a progress line every
    `log_every`, a checkpoint every `save_every` steps (and all three at the last step).

    Writes state.step, state.start_step, state.status ("done" or "interrupted") and
    state.last_checkpoint; a stopped run saves its current step (unless just saved or
    nothing was trained) and emits "interrupted".
    """
    cfg = ctx.cfg
    state.start_step = parts.runner.start_step = state.step
    state.open_window()
    state.status = "done"
    while state.step < cfg.steps:
        if stopper.requested:
            state.status = "interrupted"
            break
        parts.runner.micro_step(parts.sampler.next_batch(), step=state.step + 1)
        state.step += 1
        last = state.step == cfg.steps
        if state.step % cfg.grad_accum == 0 or last:
            parts.runner.optimizer_step()
        if state.step % cfg.log_every == 0 or last:
            log_progress(ctx, parts, state)
        if state.step % cfg.save_every == 0 or last:
            state.last_checkpoint = checkpointer.write(parts, state, final=last)
    if state.status == "interrupted":
        saved = state.last_checkpoint is not None and state.last_checkpoint.name == checkpoint_name(state.step)
        if state.step > state.start_step and not saved:
            state.last_checkpoint = checkpointer.write(parts, state, final=False)
        ctx.log.emit({"event": "interrupted", "step": state.step,
                      "checkpoint": str(state.last_checkpoint) if state.last_checkpoint else None,
                      "signal": stopper.signal_name})


ETA_SPAN_STEPS = 200  # the ETA follows the pace of about the last 200 steps


def _smoothed_pace(state: RunState, elapsed: float, n_steps: int) -> float:
    """Seconds per step for the ETA: an EMA over steps (time constant ETA_SPAN_STEPS) of each
    window's pace, so one slow window (a checkpoint's sample and evaluation, a warm-up) moves
    the ETA a little instead of swinging it. The first window (first kernels, allocations,
    compiling: often several times slower) only stands until the second replaces it, so it
    does not inflate the ETA for the next ETA_SPAN_STEPS steps. Updates and returns
    state.pace_s."""
    pace = elapsed / max(n_steps, 1)
    state.pace_windows += 1
    if state.pace_s <= 0 or state.pace_windows <= 2:
        state.pace_s = pace
    else:
        keep = float(np.exp(-max(n_steps, 1) / ETA_SPAN_STEPS))
        state.pace_s = keep * state.pace_s + (1 - keep) * pace
    return state.pace_s


def log_progress(ctx: RunContext, parts: TrainParts, state: RunState) -> None:
    """One progress line for the steps since the last: reads the pending losses into the
    window, appends the window's mean loss and grad norm and the current LR to
    state.history, writes the line to progress.jsonl and the events, opens a new window."""
    cfg, step, hist = ctx.cfg, state.step, state.history
    state.drain(parts.runner)
    elapsed = time.monotonic() - state.window_start  # seconds
    rate = len(state.window_loss) * cfg.batch_size / max(elapsed, 1e-9)  # clips per second
    mean_loss = float(np.mean(state.window_loss))
    hist["step"].append(step)
    hist["loss"].append(mean_loss)
    hist["grad_norm"].append(float(np.mean(state.window_gn)) if state.window_gn else float("nan"))
    hist["lr"].append(parts.optimizer.param_groups[0]["lr"])
    line = {"event": "progress", "step": step, "steps": cfg.steps, "loss": mean_loss,
            "smoothed_loss": report.ema_steps(hist["step"], hist["loss"],
                                                report.smoothing_span(cfg.steps))[-1], "lr": hist["lr"][-1],
            "grad_norm": hist["grad_norm"][-1], "samples_per_s": rate,
            "eta_s": (cfg.steps - step) * _smoothed_pace(state, elapsed, len(state.window_loss))}
    ctx.log.append(line)
    ctx.log.emit(line)
    state.open_window()


def finish(ctx: RunContext, parts: TrainParts, state: RunState, checkpointer: Checkpointer) -> TrainResult:
    """The run's result. A finished run gets its final outputs: a checkpoint when none was
    written (resumed at the end), adapter_final.pt, then "recommendation" and "done" events.
    Frees the sample codec either way. Reads state; writes state.last_checkpoint."""
    result = TrainResult(status=state.status, step=state.step, output_dir=ctx.out_dir,
                         last_checkpoint=state.last_checkpoint, history=state.history)
    if state.status == "done":
        if state.last_checkpoint is None:  # resumed at the end: still produce every final output
            state.last_checkpoint = result.last_checkpoint = checkpointer.write(parts, state, final=True)
        result.final_adapter = save_adapter(ctx.out_dir / ctx.final_name, lora_state_dict(parts.model),
                                            checkpointer.meta(state.step))
        if state.best:
            result.best_adapter = ctx.out_dir / "adapter_best.pt"
        rec = state.recommendation or {}
        ctx.log.emit({"event": "recommendation", **rec})
        ctx.log.emit({"event": "done", "step": state.step, "adapter": str(result.final_adapter),
                      "best": state.best or None, "recommended": rec.get("id")})
    checkpointer.close()
    return result


SURGERY_MAX_SAMPLES = 128  # calibration samples: min(128, 4 x clips), as the node does


def operate(ctx: RunContext, data: TrainData, parts: TrainParts, state: RunState,
            meta: dict[str, Any]) -> Path | None:
    """Spectral surgery of the finished adapter (selva_engine.training.surgery) into
    `adapter_final[_NNN]_surgery.pt` next to the plain final adapter, recorded in meta.json
    under "spectral_surgery". Calibration: training clips in turn, batch 1, t uniform, noise
    from the run's seed + 3. A failure is a warning (the plain adapter stays the result)."""
    cfg, model = ctx.cfg, parts.model
    n = min(SURGERY_MAX_SAMPLES, 4 * len(data.clips))
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    target = ctx.out_dir / ctx.final_name.replace(".pt", "_surgery.pt")

    def loss_fn(i: int) -> torch.Tensor:
        idx = torch.tensor([data.train_idx[i % len(data.train_idx)]], device=ctx.device)
        x1 = model.normalize(data.lat_mean[idx])
        x0 = torch.randn(x1.shape, generator=gen).to(ctx.device)
        t = torch.rand(1, generator=gen).to(ctx.device)
        with parts.autocast:
            v = model.predict_flow(parts.fm.path(x0, x1, t), t, parts.conditions(idx))
        return parts.fm.loss(v.float(), x0, x1).mean()

    model.eval()
    try:
        done = spectral_surgery(model, loss_fn, n, cfg.spectral_surgery)
        save_adapter(target, lora_state_dict(model), {**meta, "spectral_surgery": done.to_dict()})
        record: dict[str, Any] = {**done.to_dict(), "adapter": target.name}
        ctx.log.emit({"event": "surgery", **record})
    except Exception as exc:  # the plain adapter is already written: keep it as the result
        record, target = {"mode": cfg.spectral_surgery, "error": f"{type(exc).__name__}: {exc}"}, None
        ctx.log.warn(f"spectral surgery failed ({record['error']}); {ctx.final_name} is the "
                     "plain adapter")
    meta_path = ctx.out_dir / "meta.json"
    report.write_meta(ctx.out_dir, {**json.loads(meta_path.read_text()), "spectral_surgery": record})
    return target


def evaluate_run(cfg: TrainConfig, out_dir: Path, log: EventLog) -> None:
    """Evaluate every checkpoint of the finished run into `<out_dir>/eval/` (issue: [eval])."""
    log.emit({"event": "eval_start", "clips": cfg.eval_clips})
    summary = evaluate(
        data_dir=Path(cfg.data_dir), output_dir=out_dir / "eval", variant=cfg.variant,
        selva_dir=cfg.selva_dir, adapters=specs_from_run_dir(out_dir), clips=cfg.eval_clips,
        steps=cfg.eval_steps, seed=cfg.seed, cfg=cfg.eval_cfg, device=cfg.device,
        log=lambda message: log.emit({"event": "eval_progress", "message": message}),
    )
    log.emit({"event": "eval_done", "summary": str(out_dir / "eval" / "eval_summary.json"),
              "recommendation": summary["recommendation"]})
