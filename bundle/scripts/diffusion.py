"""The prior-shifted (CARD) label diffusion, on MONAI's noise schedules.

CARD's forward process y_t = sqrt(abar_t) y0 + (1 - sqrt(abar_t)) prior + sqrt(1 - abar_t) eps is
plain DDPM on z = y - prior: z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps. So the schedule and the
forward sample come from MONAI's :class:`~monai.networks.schedulers.DDPMScheduler`. The reverse chain (its
timesteps and the DDIM step on z) is :class:`~scripts.scheduler.ReverseScheduler`'s.
"""

from __future__ import annotations

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

__all__ = ["PriorShiftedDiffusion", "PREDICTION_TYPES"]

PREDICTION_TYPES = ("epsilon", "sample")


class PriorShiftedDiffusion(nn.Module):
    """Noise schedule, forward sample and training target of the prior-shifted label diffusion.

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
