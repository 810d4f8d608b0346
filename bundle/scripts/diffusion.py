"""The prior-shifted (CARD) label diffusion, on MONAI's noise schedules.

CARD's forward process y_t = sqrt(abar_t) y0 + (1 - sqrt(abar_t)) prior + sqrt(1 - abar_t) eps is
plain DDPM on z = y - prior: z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps. So the schedule and the
forward sample come from MONAI's :class:`~monai.networks.schedulers.DDPMScheduler`, and a reverse
step is a DDIM step on z with explicit (t, t_next). MONAI 1.6.1's ``DDIMScheduler.step`` assumes
t_next = t - T // K, which disagrees with its own ``set_timesteps`` (999, 888, ..., 0 for K = 10),
so the step here takes the next timestep from the timestep list instead.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

__all__ = ["PriorShiftedDiffusion", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "sample")


class PriorShiftedDiffusion(nn.Module):
    """Noise schedule, forward sample and reverse step of the prior-shifted label diffusion.

    Args:
        num_train_timesteps: T.
        schedule: a MONAI noise schedule name (``linear_beta`` in the paper).
        beta_start: first beta of the schedule.
        beta_end: last beta of the schedule.
        prediction_type: what the denoiser predicts: ``epsilon``, the noise (the paper, CARD), or ``sample``,
            the clean label vector y0 (its regression target is then the one-hot label itself).
    """

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        schedule: str = "linear_beta",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {PREDICTION_TYPES}")
        self.prediction_type = prediction_type
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            schedule=schedule,
            clip_sample=False,
            beta_start=beta_start,
            beta_end=beta_end,
        )
        self.num_train_timesteps = num_train_timesteps
        # float64: recovering y0 from y_T divides by sqrt(abar_T) ~ 0.006, which float32 rounding does not survive
        self.register_buffer("alphas_cumprod", self.scheduler.alphas_cumprod.double().clone(), persistent=False)

    def add_noise(self, y0: torch.Tensor, prior: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The forward sample y_t (computed in float32)."""
        z0 = (y0 - prior).float()
        return self.scheduler.add_noise(z0, noise.float(), t) + prior.float()

    def target(self, y0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the denoiser is trained to output for the forward sample drawn with ``noise``."""
        return noise if self.prediction_type == "epsilon" else y0

    def timesteps(self, num_steps: int) -> list[int]:
        """K strided timesteps from T-1 down to 0, evenly spaced (T-1 and 0 included)."""
        if not 1 <= num_steps <= self.num_train_timesteps:
            raise ValueError(f"num_steps must be in [1, {self.num_train_timesteps}], got {num_steps}")
        if num_steps == 1:
            return [self.num_train_timesteps - 1]
        steps = torch.linspace(self.num_train_timesteps - 1, 0, num_steps).round().long()
        return [int(s) for s in steps]

    def step(
        self,
        output: torch.Tensor,
        t: int,
        t_next: int,
        y_t: torch.Tensor,
        prior: torch.Tensor,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from timestep ``t`` to ``t_next`` (``-1`` means the clean label), in float64.

        With ``eta = 0`` this is deterministic DDIM; with ``eta = 1`` and ``t_next = t - 1`` it is the
        DDPM ancestral step (CARD's posterior mean and variance).

        Args:
            output: the denoiser's output at ``t``: the predicted noise, or y0 (``prediction_type``).
            t: current timestep.
            t_next: the next, smaller, timestep, or -1.
            y_t: current label vectors.
            prior: the prior the chain is centred on.
            eta: DDIM stochasticity.
            noise: standard normal noise for ``eta > 0`` (drawn if None).

        Returns:
            y at ``t_next`` and the predicted clean label y0_hat.
        """
        abar_t = self.alphas_cumprod[t]
        abar_next = self.alphas_cumprod[t_next] if t_next >= 0 else torch.ones_like(abar_t)
        y_t, prior, output = y_t.double(), prior.double(), output.double()
        z_t = y_t - prior
        if self.prediction_type == "epsilon":
            eps = output
            z0_hat = (z_t - (1 - abar_t).sqrt() * eps) / abar_t.sqrt()
        else:  # the noise that the predicted y0 implies
            z0_hat = output - prior
            eps = (z_t - abar_t.sqrt() * z0_hat) / (1 - abar_t).sqrt()
        sigma = eta * ((1 - abar_next) / (1 - abar_t) * (1 - abar_t / abar_next)).sqrt()
        z_next = abar_next.sqrt() * z0_hat + (1 - abar_next - sigma**2).clamp_min(0).sqrt() * eps
        if eta > 0 and t_next >= 0:
            z_next = z_next + sigma * (torch.randn_like(z_t) if noise is None else noise.double())
        return z_next + prior, z0_hat + prior
