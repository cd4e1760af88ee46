"""Conditional flow matching as SelVA / MMAudio use it: path, target, loss, Euler sampler,
classifier-free guidance and training-time timestep samplers.

Convention: t = 0 is noise x0 ~ N(0, I), t = 1 is data x1 (a normalised latent (B, N, L)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["FlowMatching", "sample_timesteps", "TIMESTEP_SAMPLERS"]

TIMESTEP_SAMPLERS = ("uniform", "logit_normal")


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape t (B,) to broadcast over x (B, ...)."""
    return t.reshape(-1, *([1] * (x.dim() - 1)))


class FlowMatching:
    """Straight-path flow matching with an optional floor `min_sigma` (0 for SelVA)."""

    def __init__(self, min_sigma: float = 0.0, num_steps: int = 25) -> None:
        self.min_sigma = float(min_sigma)
        self.num_steps = int(num_steps)

    def path(self, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - (1 - min_sigma) t) x0 + t x1, t (B,) broadcast per sample."""
        tt = _per_sample(t, x0)
        return (1 - (1 - self.min_sigma) * tt) * x0 + tt * x1

    def target(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """Velocity target x1 - (1 - min_sigma) x0."""
        return x1 - (1 - self.min_sigma) * x0

    def loss(
        self, predicted_v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample mean squared velocity error, shape (B,)."""
        err = (predicted_v - self.target(x0, x1)) ** 2
        return err.reshape(err.shape[0], -1).mean(dim=1)

    def loss_x1_target(
        self, predicted_v: torch.Tensor, x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        """SelVA's alternative loss on the implied data estimate, per sample (B,)."""
        tt = _per_sample(t, x0)
        xt = self.path(x0, x1, t)
        err = (xt + (1 - tt) * predicted_v - self.min_sigma * x0 - x1) ** 2
        return err.reshape(err.shape[0], -1).mean(dim=1)

    def time_grid(self, num_steps: int | None = None, device=None) -> torch.Tensor:
        """Euler grid linspace(0, 1 - min_sigma, steps + 1), fp32."""
        steps = self.num_steps if num_steps is None else int(num_steps)
        return torch.linspace(0, 1 - self.min_sigma, steps + 1, dtype=torch.float32, device=device)

    def to_data(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        x0: torch.Tensor,
        num_steps: int | None = None,
        *,
        trajectory: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Integrate dx/dt = fn(t, x) from t = 0 with Euler steps; returns x at the grid end.

        `fn` receives t as a 0-d float32 tensor and x; velocity is evaluated at the left end
        of each interval. If `trajectory` is a list, x after every step (x0 first) is appended.
        """
        grid = self.time_grid(num_steps, device=x0.device)
        x = x0
        if trajectory is not None:
            trajectory.append(x)
        for i in range(len(grid) - 1):
            t, dt = grid[i], grid[i + 1] - grid[i]
            x = x + dt * fn(t, x)
            if trajectory is not None:
                trajectory.append(x)
        return x


def sample_timesteps(
    batch: int,
    mode: str = "uniform",
    *,
    sigma: float = 1.0,
    mean: float = 0.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Training timesteps (B,): `uniform` t ~ U[0, 1) or `logit_normal` t = sigmoid(mean + sigma*eps).

    Drawn in fp32 from `generator` (reproducible), then cast to `dtype`.
    """
    if mode == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    elif mode == "logit_normal":
        t = torch.sigmoid(mean + sigma * torch.randn(batch, generator=generator, device=device))
    else:
        raise ValueError(f"unknown timestep sampling {mode!r}; expected one of {TIMESTEP_SAMPLERS}")
    return t.to(dtype)
