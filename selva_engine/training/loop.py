"""Pieces of the training loop, each small and testable on its own: the epoch batch sampler,
the learning-rate schedule, the fixed-noise loss probe, the overfitting rule, precision and
stop handling, the train/validation split, adapter meta and progress lines.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selva_engine.io import DiskFullError, is_disk_full
from selva_engine.model.flow import FlowMatching, sample_timesteps
from selva_engine.training.options import TrainConfig

__all__ = ["BatchSampler", "FixedLossProbe", "Stopper", "StepRunner", "TrainError", "adapter_meta",
           "append_jsonl",
           "autocast_for", "compute_dtype", "cpu_has_native_bf16", "effective_precision",
           "store_frozen_in_compute_dtype", "lr_factor", "make_scheduler", "overfitting",
           "split_clips"]


class BatchSampler:
    """Draws clips without replacement within an epoch (a fresh seeded permutation each epoch).

    When batch_size exceeds the clip count a batch spans an epoch boundary, so a clip may
    repeat inside it. `state_dict()` captures the rest of the epoch and the RNG.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int) -> None:
        if not indices:
            raise ValueError("no clips to sample from")
        self.indices = list(indices)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.queue: list[int] = []
        self.epoch = 0

    def next_batch(self) -> list[int]:
        """The next batch of clip indices."""
        batch = []
        while len(batch) < self.batch_size:
            if not self.queue:
                perm = torch.randperm(len(self.indices), generator=self.generator).tolist()
                self.queue = [self.indices[i] for i in perm]
                self.epoch += 1
            batch.append(self.queue.pop(0))
        return batch

    def state_dict(self) -> dict:
        return {"queue": list(self.queue), "epoch": self.epoch, "rng": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.queue = list(state["queue"])
        self.epoch = int(state["epoch"])
        self.generator.set_state(state["rng"])


def lr_factor(opt_step: int, cfg: TrainConfig) -> float:
    """LR multiplier at optimizer step `opt_step`: linear warm-up from 0, then constant or
    cosine decay to a floor of 1e-6/lr."""
    warmup = cfg.warmup_steps
    if opt_step < warmup:
        return opt_step / warmup
    if cfg.lr_schedule == "constant":
        return 1.0
    total = math.ceil(cfg.steps / cfg.grad_accum)
    p = (opt_step - warmup) / max(1, total - warmup)
    return max(1e-6 / cfg.lr, 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR applying `lr_factor` to every parameter group."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))


class FixedLossProbe:
    """Deterministic flow loss on fixed noise and a fixed t grid (validation and anchors).

    For clip i the noise is drawn from a generator seeded with (seed, i), so the same clip
    always meets the same noise at the same t values, at every checkpoint.
    """

    def __init__(self, fm: FlowMatching, seed: int,
                 t_grid: Sequence[float] = (0.1, 0.3, 0.5, 0.7, 0.9)) -> None:
        self.fm = fm
        self.seed = seed
        self.t_grid = torch.tensor(list(t_grid), dtype=torch.float32)

    @torch.no_grad()
    def loss(self, model, conditions: Callable, lat_mean: torch.Tensor, idx: Sequence[int]) -> float:
        """Mean loss over clips `idx` (rows of lat_mean (C, N, L)) and the t grid."""
        if not idx:
            return float("nan")
        device = lat_mean.device
        k = len(self.t_grid)
        total = 0.0
        for i in idx:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 17 + int(i))
            x0 = torch.randn((k, *lat_mean.shape[1:]), generator=g).to(device)
            x1 = model.normalize(lat_mean[i].expand(k, -1, -1))
            t = self.t_grid.to(device)
            cond = conditions(torch.full((k,), int(i), device=device))
            v = model.predict_flow(self.fm.path(x0, x1, t), t, cond)
            total += self.fm.loss(v.float(), x0, x1).mean().item()
        return total / len(idx)


def overfitting(val: Sequence[float], train: Sequence[float], patience: int) -> bool:
    """True when validation loss rose at each of the last `patience` checkpoints while the
    training loss fell at each of them."""
    if patience <= 0 or len(val) < patience + 1:
        return False
    v, t = list(val)[-(patience + 1):], list(train)[-(patience + 1):]
    if any(x != x for x in v + t):  # NaN: no validation clips
        return False
    return all(b > a for a, b in zip(v, v[1:], strict=False)) and all(
        b < a for a, b in zip(t, t[1:], strict=False)
    )


class TrainError(RuntimeError):
    """A training run cannot start or continue (message names the cause and the fix)."""


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX), where oneDNN
    runs them several times faster than fp32; False where it would only emulate them."""
    # oneDNN's own "bf16 supported" query is also true on AVX512 CPUs that only emulate
    # bf16 (slower than fp32 there), so ask for the instructions themselves.
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a torch build without these queries
        return False


def effective_precision(requested: str, device: torch.device, warn: Callable[[str], None]) -> str:
    """Effective precision; bf16 without hardware support falls back with a warning.

    bf16 is kept on a CUDA GPU that supports it and on a CPU with native bf16 (AVX512-BF16
    or AMX); fp16 needs a CUDA GPU.
    """
    if requested != "bf16":
        if requested == "fp16" and device.type != "cuda":
            warn("fp16 needs a CUDA GPU; training in fp32 on the CPU")
            return "fp32"
        return requested
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    if device.type == "cuda":
        warn("this GPU has no bf16 support; falling back to fp16 with a grad scaler")
        return "fp16"
    if device.type == "cpu" and cpu_has_native_bf16():
        return "bf16"
    warn(f"bf16 has no hardware support on this {device.type.upper()} (no AVX512-BF16 or AMX); "
         "falling back to fp32")
    return "fp32"


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a precision: off for fp32, bf16 or fp16 otherwise (fp32
    LoRA weights stay fp32; only the matmuls run in the low precision)."""
    if precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=compute_dtype(precision))


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the matmuls of a precision run in."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def store_frozen_in_compute_dtype(model: torch.nn.Module, precision: str) -> int:
    """Keep the frozen Linear / Conv1d weights of `model` in the precision's compute dtype.

    Autocast would cast each of them to that dtype at every forward pass; storing them cast
    once gives the same numbers without the per-step casts and halves their memory. Trainable
    parameters (the LoRA weights) and every other frozen tensor (latent statistics, norms,
    empty tokens) stay as they are. Returns the number of tensors cast; 0 for fp32.
    """
    if precision == "fp32":
        return 0
    dtype, count = compute_dtype(precision), 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear | torch.nn.Conv1d):
            continue
        for param in (module.weight, module.bias):
            if param is not None and not param.requires_grad and param.dtype != dtype:
                param.data = param.data.to(dtype)
                count += 1
    return count


def adapter_meta(cfg: TrainConfig, variant: str, step: int, precision: str, n_train: int, n_val: int,
                 init_mode: str = "standard") -> dict:
    """ComfyUI-SelVA meta keys (variant, rank, alpha, target, steps, timestep_mode,
    logit_normal_sigma, curriculum_switch, lora_dropout, lora_plus_ratio, lr_schedule,
    init_mode, use_rslora, latent_mixup_alpha, latent_noise_sigma) plus ours. `init_mode` is
    what the model's layers hold ("pissa" once a PiSSA residual is in the base)."""
    return {
        "variant": variant,
        "rank": cfg.rank,
        "alpha": cfg.effective_alpha,
        "target": list(cfg.target),
        "steps": step,
        "timestep_mode": cfg.timestep_sampling,
        "logit_normal_sigma": cfg.logit_normal_sigma,
        "lora_dropout": cfg.lora_dropout,
        "lora_plus_ratio": cfg.lora_plus_ratio,
        "lr_schedule": cfg.lr_schedule,
        "init_mode": init_mode,
        "use_rslora": cfg.rslora,
        "curriculum_switch": cfg.curriculum_switch,
        "latent_mixup_alpha": cfg.latent_mixup_alpha,
        "latent_noise_sigma": cfg.latent_noise_sigma,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "grad_accum": cfg.grad_accum,
        "weight_decay": cfg.weight_decay,
        "precision": precision,
        "seed": cfg.seed,
        "latent_sampling": cfg.latent_sampling,
        "train_clips": n_train,
        "val_clips": n_val,
        "total_steps": cfg.steps,
        "trainer": "selvad",
    }


class Stopper:
    """SIGTERM/SIGINT (main thread only) or an external event ask the loop to stop."""

    def __init__(self, external: threading.Event | None, install_signals: bool) -> None:
        self.event = external or threading.Event()
        self.signal_name = ""
        self._old: dict[int, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name
        self.event.set()

    def restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)

    @property
    def requested(self) -> bool:
        return self.event.is_set()


def split_clips(clips: Sequence[Any], val_clips: int | None, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) index split; default val = 1 when >= 8 clips, else 0."""
    n = len(clips)
    k = (1 if n >= 8 else 0) if val_clips is None else val_clips
    if k >= n:
        raise TrainError(f"val_clips = {k} leaves no clip to train on ({n} clips); lower val_clips")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919)).tolist()
    val = sorted(order[:k])
    return [i for i in range(n) if i not in val], val

def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and fsync it. A failed write is cut off again (no torn line is
    left behind when it can be helped); a full disk raises DiskFullError."""
    data = memoryview((json.dumps(record) + "\n").encode("utf-8"))
    fd, start = -1, 0  # start: the file's size before this line, in bytes
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        start = os.fstat(fd).st_size
        while data:
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as exc:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
        if is_disk_full(exc):
            raise DiskFullError(path.parent) from exc
        raise
    finally:
        if fd >= 0:
            os.close(fd)


def timestep_mode_at(cfg: TrainConfig, step: int, start_step: int = 0) -> str:
    """The timestep sampler of micro-step `step` (1-based). "curriculum" is logit_normal up to
    start_step + floor((steps - start_step) * curriculum_switch), uniform after: the switch
    point is counted from the resume step, as ComfyUI-SelVA's node does."""
    if cfg.timestep_sampling != "curriculum":
        return cfg.timestep_sampling
    switch = start_step + math.floor((cfg.steps - start_step) * cfg.curriculum_switch)
    return "logit_normal" if step <= switch else "uniform"


def augment_latents(x1: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Latent mixup, then latent noise, of a normalised batch x1 (B, N, L), as ComfyUI-SelVA's
    node defines them: x1 <- lam x1 + (1 - lam) x1[perm] with one lam ~ Beta(a, a) per batch
    (B > 1 only), then x1 <- x1 + eps * sigma * std(x1). Every draw comes from `gen` (the
    run's noise generator, saved in each checkpoint), so a run is deterministic and resumes
    exactly; with both off nothing is drawn."""
    a, sigma = float(cfg.latent_mixup_alpha), float(cfg.latent_noise_sigma)
    if a > 0 and x1.shape[0] > 1:
        seed = int(torch.randint(0, 2**63 - 1, (1,), generator=gen))
        lam = float(np.random.default_rng(seed).beta(a, a))
        perm = torch.randperm(x1.shape[0], generator=gen).to(x1.device)
        x1 = lam * x1 + (1.0 - lam) * x1[perm]
    if sigma > 0:
        eps = torch.randn(x1.shape, generator=gen).to(x1.device)
        x1 = x1 + eps * (sigma * x1.std())
    return x1


class StepRunner:
    """The training step itself, shared by `train()` and bench/train_throughput.py.

    Holds the clip tensors resident on the device (posterior mean/std (C, N, L)) and a
    `conditions(idx)` function returning preprocessed conditions for clip indices.
    `micro_step(idx)` draws x0, t (and the posterior sample) from the run's generators,
    runs the forward under autocast and the backward (scaled by 1/grad_accum, through the
    grad scaler); `optimizer_step()` unscales, clips the global grad norm of the LoRA
    parameters and steps optimizer and scheduler.

    Neither reads a number back from the device: losses and grad norms stay there until
    `flush()` fetches them all in one transfer (at each log interval and before each
    checkpoint), so the host never waits for the GPU in between and keeps queueing work.
    `flush()` is also where a non-finite loss is caught; a diverged run therefore fails at
    the next flush, before anything of it is saved.
    """

    def __init__(self, model, fm: FlowMatching, cfg: TrainConfig, *, lat_mean: torch.Tensor,
                 lat_std: torch.Tensor, conditions: Callable, autocast, scaler, optimizer,
                 scheduler, params: list[torch.nn.Parameter], gen_t: torch.Generator,
                 gen_noise: torch.Generator) -> None:
        self.model, self.fm, self.cfg = model, fm, cfg
        self.lat_mean, self.lat_std, self.conditions = lat_mean, lat_std, conditions
        self.autocast, self.scaler = autocast, scaler
        self.optimizer, self.scheduler, self.params = optimizer, scheduler, params
        self.gen_t, self.gen_noise = gen_t, gen_noise
        self.device = lat_mean.device
        self.start_step = 0  # the step this run (or its resume) started from: curriculum
        self._losses: list[torch.Tensor] = []
        self._norms: list[torch.Tensor] = []
        # a one-shot stand-in for the first micro_step (acceleration.CompileTrial), or None
        self.first_step: Callable[[StepRunner, list[int], int | None], None] | None = None

    def micro_step(self, idx_list: list[int], step: int | None = None) -> None:
        """Forward + backward of one micro-batch; its loss waits on the device for flush().

        `step` (1-based, the micro-step being trained) picks the curriculum's timestep mode;
        `self.start_step` is where this run (or its resume) began.
        """
        if self.first_step is not None:
            trial, self.first_step = self.first_step, None
            return trial(self, idx_list, step)
        cfg, put = self.cfg, self._to_device
        idx = put(torch.tensor(idx_list))
        shape = (len(idx_list), *self.lat_mean.shape[1:])
        # noise is drawn on the CPU from the run's generators: identical on every device
        x0 = put(torch.randn(shape, generator=self.gen_noise))
        x1 = self.lat_mean[idx]
        if cfg.latent_sampling == "posterior":
            x1 = x1 + self.lat_std[idx] * put(torch.randn(shape, generator=self.gen_noise))
        x1 = augment_latents(self.model.normalize(x1), cfg, self.gen_noise)
        mode = timestep_mode_at(cfg, step if step is not None else self.start_step + 1,
                                self.start_step)
        t = put(sample_timesteps(len(idx_list), mode, sigma=cfg.logit_normal_sigma,
                                 generator=self.gen_t))
        with self.autocast:
            v = self.model.predict_flow(self.fm.path(x0, x1, t), t, self.conditions(idx))
        loss = self.fm.loss(v.float(), x0, x1).mean()
        self.scaler.scale(loss / cfg.grad_accum).backward()
        self._losses.append(loss.detach())

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        """A small host tensor on the training device. To a GPU it goes through pinned memory
        without blocking: a plain copy would wait for every queued kernel first."""
        if self.device.type != "cuda":
            return x.to(self.device)
        return x.pin_memory().to(self.device, non_blocking=True)

    def optimizer_step(self) -> None:
        """Clip, step optimizer and scheduler, clear gradients; the pre-clip norm waits for flush()."""
        self.scaler.unscale_(self.optimizer)
        gn = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # a CPU zero when no LoRA weight got a gradient: keep it beside the losses
        self._norms.append(gn.detach().float().to(self.device))

    def flush(self, step: int) -> tuple[list[float], list[float]]:
        """(losses, pre-clip grad norms) since the last flush, in step order.

        `step` is the count of micro-steps run so far; it names the first step whose loss is
        not finite in the TrainError raised then.
        """
        pending = self._losses + self._norms
        values = torch.stack(pending).tolist() if pending else []
        losses, norms = values[: len(self._losses)], values[len(self._losses):]
        self._losses, self._norms = [], []
        for i, value in enumerate(losses):
            if not math.isfinite(value):
                at = step - len(losses) + 1 + i
                raise TrainError(f"step {at}: loss became {value}; lower lr or use precision = \"fp32\"")
        return losses, norms
