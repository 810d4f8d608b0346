"""Reverse samplers of the label diffusion: which timesteps the chain visits and how much noise each step adds."""

from __future__ import annotations

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

    These are the settings; :meth:`DiffMIC.sample <scripts.network.DiffMIC.sample>` runs the chain (in
    float64, with the noise passed in, one row per draw, so that a caller can seed it per image).

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

    def describe(self, diffusion: PriorShiftedDiffusion) -> dict:
        """The settings, as written beside the metrics they produced (``steps``: reverse steps taken)."""
        return {"name": self.name, "steps": len(self.timesteps(diffusion)), "eta": self.eta}
