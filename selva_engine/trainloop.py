"""Pieces of the training loop that hold state of their own: the epoch batch sampler, the
learning-rate schedule, the fixed-noise loss probe and the overfitting rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from .flow import FlowMatching
from .options import TrainConfig

__all__ = ["BatchSampler", "FixedLossProbe", "lr_factor", "make_scheduler", "overfitting"]


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
