"""The reverse chain of the label diffusion: which timesteps it visits, how much noise each step adds, and the step.

Like MONAI's :class:`~monai.networks.schedulers.DDIMScheduler` and diffusers' ``DDIMScheduler``, one class holds
the timestep spacing and the step, and the caller passes the noise in. Unlike MONAI 1.6.1's ``DDIMScheduler.step``,
which assumes t_next = t - T // K although its own ``set_timesteps`` gives 999, 888, ..., 0 for K = 10, the step
takes the next timestep explicitly, from :attr:`ReverseScheduler.timesteps`.

CARD's prior-shifted chain is DDIM on z = y - prior (see :mod:`scripts.diffusion`), so a step shifts by the prior,
steps z and shifts back.
"""

import torch
from torch import nn

from .diffusion import PriorShiftedDiffusion

__all__ = ["ReverseScheduler", "SAMPLERS"]

SAMPLERS = ("ddim", "ddpm", "truncated")
"""The reverse chains (the config's ``sampler_name``)."""


class ReverseScheduler(nn.Module):
    """A reverse-diffusion chain from y_T = prior + noise down to the denoised label vector.

    - ``ddim``: ``steps`` timesteps evenly strided from T-1 to 0, DDIM steps with stochasticity ``eta``
      (0: deterministic after the initial draw). The default, with 10 steps.
    - ``ddpm``: every timestep T-1, ..., 0 with ancestral (posterior) steps; ``steps`` and ``eta`` are unused.
    - ``truncated``: the authors' released procedure, kept only to reproduce their numbers: start from
      N(prior, I) as if at timestep ``steps - 1`` and take ancestral steps ``steps - 1, ..., 0`` of the
      T-step chain. The start is not the marginal at that timestep (which is nearly y0, not N(prior, I)).

    :meth:`DiffMIC.sample <scripts.network.DiffMIC.sample>` runs the chain (the loop stays in the network, where
    TorchScript compiles it with the denoiser); this module is compiled with it, so its settings are plain
    attributes. The noise is the caller's: :attr:`num_draws` standard normal vectors per chain (the bundle's
    inferer seeds them per image, :meth:`DiffMICInferer.noise <scripts.inferer.DiffMICInferer.noise>`).

    Args:
        diffusion: the diffusion whose noise schedule (``alphas_cumprod``, T) the chain reverses.
        name: ``ddim``, ``ddpm`` or ``truncated``.
        steps: K, the number of reverse steps of ``ddim`` and ``truncated``.
        eta: DDIM stochasticity of ``ddim``.
    """

    timesteps: list[int]

    def __init__(self, diffusion: PriorShiftedDiffusion, name: str = "ddim", steps: int = 10, eta: float = 0.0) -> None:
        super().__init__()
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLERS}")
        if steps < 1:
            raise ValueError(f"sampler steps must be at least 1, got {steps}")
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"sampler eta must be in [0, 1], got {eta}")
        self.name = name
        self.steps = int(steps)
        self.eta = float(eta) if name == "ddim" else 1.0
        self.num_train_timesteps = diffusion.num_train_timesteps
        # float64: recovering y0 from y_T divides by sqrt(abar_T) ~ 0.006, which float32 rounding does not survive
        self.register_buffer("alphas_cumprod", diffusion.alphas_cumprod.clone(), persistent=False)
        self.timesteps = self._timesteps()
        # standard normal vectors one chain consumes: the initial draw, plus one per noisy step (every step but
        # the last, onto t = -1)
        self.num_draws = 1 if self.eta == 0 else len(self.timesteps)

    def _timesteps(self) -> list[int]:
        """The timesteps the chain visits, from the first to 0."""
        total = self.num_train_timesteps
        if self.name == "ddpm":
            return list(range(total - 1, -1, -1))
        if self.steps > total:
            raise ValueError(f"{self.name} sampler steps must be at most T={total}, got {self.steps}")
        if self.name == "truncated":
            return list(range(self.steps - 1, -1, -1))
        if self.steps == 1:
            return [total - 1]
        return [int(s) for s in torch.linspace(total - 1, 0, self.steps).round().long()]  # T-1 and 0 included

    def describe(self) -> dict:
        """The settings, as written beside the metrics they produced (``steps``: reverse steps taken)."""
        return {"name": self.name, "steps": len(self.timesteps), "eta": self.eta}

    def extra_repr(self) -> str:
        return f"{self.name}, steps={len(self.timesteps)}, eta={self.eta}"

    def step(
        self,
        output: torch.Tensor,
        t: int,
        t_next: int,
        y_t: torch.Tensor,
        prior: torch.Tensor,
        prediction_type: str,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One reverse step from timestep ``t`` to ``t_next`` (``-1`` means the clean label), in float64.

        With ``eta = 0`` this is deterministic DDIM; with ``eta = 1`` and ``t_next = t - 1`` it is the
        DDPM ancestral step (CARD's posterior mean and variance). The chain passes its own :attr:`eta`.

        Args:
            output: the denoiser's output at ``t``: the predicted noise, or y0 (``prediction_type``).
            t: current timestep.
            t_next: the next, smaller, timestep, or -1.
            y_t: current label vectors.
            prior: the prior the chain is centred on.
            prediction_type: how to read ``output``, ``epsilon`` or ``sample``: the diffusion's
                :attr:`~scripts.diffusion.PriorShiftedDiffusion.prediction_type`, what the denoiser was trained on
                (the diffusion owns it: the chain is chosen at evaluation, the parameterisation at training).
            eta: DDIM stochasticity.
            noise: standard normal noise for ``eta > 0`` (drawn if None).

        Returns:
            y at ``t_next`` and the predicted clean label y0_hat.
        """
        abar_t = self.alphas_cumprod[t]
        abar_next = self.alphas_cumprod[t_next] if t_next >= 0 else torch.ones_like(abar_t)
        y_t, prior, output = y_t.double(), prior.double(), output.double()
        z_t = y_t - prior
        if prediction_type == "epsilon":
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
