"""The records a training run hands from phase to phase, and what a step checkpoint holds.

- `RunContext`: what was asked and where it goes; fixed once the run has started.
- `TrainData`: the extracted clips, their train/validation split, their tensors on the device.
- `TrainParts`: the generator with LoRA and everything that steps it (optimizer, scheduler,
  grad scaler, random generators, batch sampler, step runner).
- `RunState`: everything that changes as the run goes (step, loss history, best checkpoint,
  the open log window, the last checkpoint, the run's verdicts). Nothing else is mutable.

`checkpoint_payload` writes TrainParts + RunState into a step checkpoint's dict and
`restore_checkpoint` reads them back, the two halves of an exact resume side by side.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selva_engine.audio.augment import AugmentSettings
from selva_engine.audio.prepare import PrepareSettings
from selva_engine.data.extract import ExtractedClip
from selva_engine.io import atomic_write_text
from selva_engine.model.flow import FlowMatching
from selva_engine.model.generator import Conditions, Generator
from selva_engine.model.lora import load_lora_state_dict
from selva_engine.model.variants import Variant
from selva_engine.training.loop import BatchSampler, FixedLossProbe, StepRunner, append_jsonl
from selva_engine.training.options import TrainConfig
from selva_engine.weights.locate import VariantWeights

__all__ = ["ClipConditions", "EventFn", "EventLog", "RunContext", "RunState", "TrainData", "TrainParts",
           "checkpoint_payload", "new_history", "restore_checkpoint"]

EventFn = Callable[[dict], None]


class EventLog:
    """Where a run reports: the `events` callback gets every event as a plain dict stamped
    with the time (unix seconds); progress.jsonl gets the progress lines and checkpoint records."""

    def __init__(self, sink: EventFn | None, progress_path: Path) -> None:
        self.sink = sink
        self.progress_path = progress_path

    def emit(self, event: dict) -> None:
        """Send `event` (with "time" first) to the callback, if there is one."""
        event = {"time": round(time.time(), 3), **event}
        if self.sink:
            self.sink(event)

    def warn(self, message: str) -> None:
        """Emit a "warning" event."""
        self.emit({"event": "warning", "message": message})

    def append(self, record: dict) -> None:
        """Append `record` (with "time" first) to progress.jsonl, flushed to disk."""
        append_jsonl(self.progress_path, {"time": round(time.time(), 3), **record})

    def keep_until(self, step: int) -> int:
        """Drop the records of steps after `step` from progress.jsonl, and any torn line (a
        write cut short by a kill), so that a resumed run logs each step once. Rewrites the
        file atomically, only when something changes; returns the number of lines dropped."""
        try:
            text = self.progress_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return 0
        lines = text.splitlines()
        kept = [line for line in lines if _record_until(line, step)]
        if len(kept) < len(lines) or (text and not text.endswith("\n")):
            atomic_write_text(self.progress_path, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)


def _record_until(line: str, step: int) -> bool:
    """Whether a progress.jsonl line is a whole record of a step up to `step` (or of none)."""
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and not (isinstance(record.get("step"), int) and record["step"] > step)


@dataclass(frozen=True)
class RunContext:
    """What one run was asked to do and where it goes; set by `open_run`, never changed."""

    cfg: TrainConfig
    out_dir: Path  # adapters, samples, plots, meta.json, progress.jsonl
    variant: Variant
    weights: VariantWeights
    device: torch.device
    precision: str  # the effective one (after any fallback)
    log: EventLog
    # adapter_final.pt, or adapter_final_NNN.pt when the directory holds one from an earlier
    # run (never overwritten, as ComfyUI-SelVA does)
    final_name: str = "adapter_final.pt"
    # the [prepare] steps applied to the clips' audio before encoding: dataset.toml's with
    # the config's prepare_* values over them (selva_engine.data.prepare_file)
    prepare: PrepareSettings = PrepareSettings()
    # the [augment] variants of the training clips, encoded after [prepare]: dataset.toml's
    # with the config's augment_* values over them (selva_engine.data.augment_file)
    augment: AugmentSettings = AugmentSettings()


@dataclass(frozen=True)
class TrainData:
    """The run's clips: extracted features, the split and the tensors resident on the device.

    The split holds indices into `clips`; the device tensors have one row per clip, in that
    order, so the step runner and the probe index them with clip indices directly.
    """

    clips: list[ExtractedClip]
    train_idx: list[int]
    val_idx: list[int]
    lat_mean: torch.Tensor  # (C, N, L) VAE posterior mean, raw VAE space
    lat_std: torch.Tensor  # (C, N, L) VAE posterior std
    clip_f: torch.Tensor  # (C, Nc, clip_dim)
    sync_f: torch.Tensor  # (C, Ns, sync_dim)
    text_f: torch.Tensor  # (C, Nt, D)
    negative_text: torch.Tensor | None  # (1, Nt, D) the sample's negative prompt, if any

    @property
    def stems(self) -> list[str]:
        return [c.stem for c in self.clips]

    @property
    def sample_idx(self) -> int:
        """The clip every checkpoint sample is generated for (the first training clip)."""
        return self.train_idx[0]

    def split_stems(self) -> dict[str, list[str]]:
        """{"train": stems, "val": stems}: the split as a checkpoint stores it."""
        stems = self.stems
        return {"train": [stems[i] for i in self.train_idx], "val": [stems[i] for i in self.val_idx]}


class ClipConditions:
    """`conditions(idx)`: the generator's preprocessed conditions for clip indices `idx`.

    Conditions depend only on frozen modules unless a LoRA target sits inside them; then
    `cached` holds them for every clip (computed once) and a call only indexes it. Otherwise
    (cached None) every call runs the preprocessing on the clips' features.
    """

    def __init__(self, model: Generator, data: TrainData, cached: Conditions | None) -> None:
        self.model, self.data, self.cached = model, data, cached

    def __call__(self, idx: torch.Tensor) -> Conditions:
        if self.cached is not None:
            return self.cached.index(idx)
        d = self.data
        return self.model.preprocess_conditions(d.clip_f[idx], d.sync_f[idx], d.text_f[idx])


@dataclass(frozen=True)
class TrainParts:
    """The model being trained and what steps it; built by `build_model`. The objects inside
    carry their own state (weights, moments, RNG positions): checkpoints save and restore it."""

    model: Generator
    lora_layers: list[str]  # names of the wrapped Linear layers
    params: list[torch.nn.Parameter]  # every lora_A, then every lora_B
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    autocast: Any  # torch.autocast context, reused for every forward
    conditions: ClipConditions
    fm: FlowMatching
    sampler: BatchSampler
    gen_t: torch.Generator  # timesteps
    gen_noise: torch.Generator  # x0 and posterior eps
    probe: FixedLossProbe
    runner: StepRunner


def new_history() -> dict[str, list]:
    """The loss history of a fresh run: per log line (step, loss, grad_norm, lr) and per
    checkpoint (ckpt_step, val_loss, train_fixed_loss, metrics as JSON strings)."""
    return {"step": [], "loss": [], "grad_norm": [], "lr": [], "ckpt_step": [],
            "val_loss": [], "train_fixed_loss": [], "metrics": []}


@dataclass
class RunState:
    """Everything of a run that changes while it trains, in one place.

    `step` counts micro-batches trained; `history` and `best` go into every checkpoint and
    come back on resume; the window collects the losses and grad norms read back since the
    last progress line (`window_start` is time.monotonic() seconds).
    """

    step: int = 0
    history: dict[str, list] = field(default_factory=new_history)
    best: dict[str, Any] = field(default_factory=dict)  # {"step", "val_loss", "file"} once known
    start_step: int = 0  # the step the loop started at (> 0 after a resume)
    status: str = "running"  # then "done" or "interrupted"
    last_checkpoint: Path | None = None
    window_loss: list[float] = field(default_factory=list)
    window_gn: list[float] = field(default_factory=list)
    window_start: float = 0.0
    overfitting: bool = False
    recommendation: dict | None = None  # the latest checkpoint recommendation
    pace_s: float = 0.0  # seconds per step, an EMA over recent steps (0: not yet measured)
    pace_windows: int = 0  # log windows the pace has seen (the first one carries the warm-up)

    def drain(self, runner: StepRunner) -> None:
        """Read the losses and grad norms waiting on the device into the log window (raises
        TrainError on a non-finite loss)."""
        losses, norms = runner.flush(self.step)
        self.window_loss.extend(losses)
        self.window_gn.extend(norms)

    def open_window(self) -> None:
        """Start a new log window (empty, timed from now)."""
        self.window_loss, self.window_gn, self.window_start = [], [], time.monotonic()

    def add_checkpoint(self, step: int, val_loss: float | None, train_fixed: float, metrics: dict) -> None:
        """Record a checkpoint's losses and sample metrics in the history (NaN: no val clips)."""
        self.history["ckpt_step"].append(step)
        self.history["val_loss"].append(val_loss if val_loss is not None else float("nan"))
        self.history["train_fixed_loss"].append(train_fixed)
        self.history["metrics"].append(json.dumps(metrics))


def _rng_state(parts: TrainParts, device: torch.device) -> dict[str, torch.Tensor]:
    rng = {"torch": torch.get_rng_state(), "t": parts.gen_t.get_state(), "noise": parts.gen_noise.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def checkpoint_payload(ctx: RunContext, data: TrainData, parts: TrainParts, state: RunState,
                       lora_state: dict[str, torch.Tensor], meta: dict) -> dict[str, Any]:
    """The step checkpoint of `state.step` (see selva_engine.outputs.checkpoint): the adapter
    tensors `lora_state`, `meta`, and all an exact resume needs (optimizer, scheduler,
    RNG states, batch sampler, history, best, grad scaler, config, split). Reads only."""
    return {
        "state_dict": lora_state, "meta": meta, "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(), "step": state.step, "rng": _rng_state(parts, ctx.device),
        "sampler": parts.sampler.state_dict(), "history": state.history, "best": state.best,
        "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else {},
        "config": json.dumps(ctx.cfg.to_dict()), "split": data.split_stems(),
    }


def restore_checkpoint(ckpt: dict[str, Any], source: Path, parts: TrainParts, state: RunState,
                       device: torch.device) -> None:
    """Load a step checkpoint into `parts` (LoRA weights, optimizer, scheduler, scaler, RNG
    states, batch sampler) and `state` (step, history, best). Keys older checkpoints lack are
    left as they are; `source` names the file in errors."""
    load_lora_state_dict(parts.model, ckpt["state_dict"], source=str(source))
    parts.optimizer.load_state_dict(ckpt["optimizer"])
    parts.scheduler.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt and ckpt["scaler"]:
        parts.scaler.load_state_dict(ckpt["scaler"])
    state.step = int(ckpt["step"])
    rng = ckpt.get("rng", {})
    if "torch" in rng:
        torch.set_rng_state(rng["torch"])
    if "cuda" in rng and device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], device)
    if "t" in rng:
        parts.gen_t.set_state(rng["t"])
        parts.gen_noise.set_state(rng["noise"])
    if "sampler" in ckpt:
        parts.sampler.load_state_dict(ckpt["sampler"])
    state.history.update({k: list(v) for k, v in ckpt.get("history", {}).items()})
    state.best = dict(ckpt.get("best", {}))

