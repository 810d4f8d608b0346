"""Reverse samplers of the label diffusion: which timesteps the chain visits and how much noise each step adds."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .diffusion import PriorShiftedDiffusion

__all__ = ["ReverseSampler", "SAMPLERS"]

SAMPLERS = ("ddim", "ddpm", "truncated")


class ReverseSampler:
    """A reverse-diffusion procedure from y_T = prior + noise down to the denoised label vector.

    - ``ddim``: ``steps`` timesteps evenly strided from T-1 to 0, DDIM steps with stochasticity ``eta``
      (0: deterministic after the initial draw). The default, with 10 steps.
    - ``ddpm``: every timestep T-1, ..., 0 with ancestral (posterior) steps; ``steps`` and ``eta`` are unused.
    - ``truncated``: the authors' released procedure, kept only to reproduce their numbers: start from
      N(prior, I) as if at timestep ``steps - 1`` and take ancestral steps ``steps - 1, ..., 0`` of the
      T-step chain. The start is not the marginal at that timestep (which is nearly y0, not N(prior, I)).

    All steps run in float64 (see :meth:`PriorShiftedDiffusion.step`). The noise of a chain is passed in,
    one row per draw, so that a caller can seed it per image.

    Args:
        name: ``ddim``, ``ddpm`` or ``truncated``.
        steps: K, the number of reverse steps of ``ddim`` and ``truncated``.
        eta: DDIM stochasticity of ``ddim``.
    """

    def __init__(self, name: str = "ddim", steps: int = 10, eta: float = 0.0) -> None:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
        if steps < 1:
            raise ValueError(f"sampler steps must be at least 1, got {steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"sampler eta must be in [0, 1], got {eta}")
        self.name = name
        self.steps = int(steps)
        self.eta = float(eta) if name == "ddim" else 1.0

    def timesteps(self, diffusion: PriorShiftedDiffusion) -> list[int]:
        """The timesteps the chain visits, from the first to 0."""
        if self.name == "ddim":
            return diffusion.timesteps(self.steps)
        if self.name == "ddpm":
            return list(range(diffusion.num_train_timesteps - 1, -1, -1))
        if self.steps > diffusion.num_train_timesteps:
            raise ValueError(f"truncated sampler steps must be at most T={diffusion.num_train_timesteps}")
        return list(range(self.steps - 1, -1, -1))

    def num_draws(self, diffusion: PriorShiftedDiffusion) -> int:
        """Standard normal vectors one chain consumes: the initial draw, plus one per noisy step."""
        if self.eta == 0:
            return 1
        return len(self.timesteps(diffusion))  # every step but the last (onto t = -1) adds noise

    def __call__(
        self,
        diffusion: PriorShiftedDiffusion,
        denoiser: Callable[..., torch.Tensor],
        features: torch.Tensor,
        prior: torch.Tensor,
        noise: torch.Tensor,
        trajectory: bool = False,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Runs the chain.

        Args:
            diffusion: the noise schedule and reverse step.
            denoiser: ``denoiser(features, y_t, prior, t)`` predicting the noise.
            features: rho(x), shape (N, width).
            prior: the prior the chain is centred on, shape (N, num_classes).
            noise: standard normal draws, shape (N, :meth:`num_draws`, num_classes).
            trajectory: whether to return y at every visited timestep.

        Returns:
            the denoised label vectors (N, num_classes), in ``prior``'s dtype, and the trajectory
            ``[y_T, y at the next timestep, ..., y0]`` in float64 (empty unless asked for).
        """
        steps = self.timesteps(diffusion)
        draws = self.num_draws(diffusion)
        if noise.shape != (prior.shape[0], draws, prior.shape[1]):
            expected = (prior.shape[0], draws, prior.shape[1])
            raise ValueError(f"the {self.name} sampler needs noise of shape {expected}, got {tuple(noise.shape)}")
        y = prior.double() + noise[:, 0].double()
        path = [y] if trajectory else []
        for i, t in enumerate(steps):
            t_next = steps[i + 1] if i + 1 < len(steps) else -1
            t_batch = torch.full((prior.shape[0],), t, dtype=torch.long, device=prior.device)
            eps = denoiser(features, y.to(prior.dtype), prior, t_batch)
            step_noise = noise[:, i + 1] if self.eta > 0 and t_next >= 0 else None
            y, _ = diffusion.step(eps, t, t_next, y, prior, eta=self.eta, noise=step_noise)
            if trajectory:
                path.append(y)
        return y.to(prior.dtype), path

    def describe(self, diffusion: PriorShiftedDiffusion) -> dict:
        """The settings, as written beside the metrics they produced (``steps``: reverse steps taken)."""
        return {"name": self.name, "steps": len(self.timesteps(diffusion)), "eta": self.eta}
