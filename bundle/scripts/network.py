"""DiffMIC as one module: guidance (DCG), image encoder, denoiser, its EMA copy, and sampling."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .dcg import DualGranularityGuidance
from .denoiser import ConditionalDenoiser, ImageEncoder
from .diffusion import PriorShiftedDiffusion

__all__ = ["DiffMIC", "warmup_ema"]


def warmup_ema(decay: float):
    """An ``AveragedModel`` averaging function: EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)).

    A fixed decay averages the first, fast-changing weights for too long: with 0.99, a few hundred steps
    in (all a CPU run has), the average still mixes weights that no longer agree with each other or with
    the averaged BatchNorm statistics, and it samples far worse than the trained weights.
    """

    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        return averaged + (current - averaged) * (1.0 - min(decay, (1.0 + n) / (10.0 + n)))

    return average


class DiffMIC(nn.Module):
    """The DiffMIC classifier (Yang et al., MICCAI 2023).

    ``forward(images)`` returns the denoised label vectors: reverse diffusion from N(prior, I)
    through ``sampling_steps`` strided steps, with the EMA denoiser when there is one. With
    ``use_diffusion=False`` (the ``basic`` ablation) it returns the softmax of the guidance logits.

    Args:
        num_classes: number of classes.
        in_channels: image channels.
        guidance: keyword arguments of :class:`DualGranularityGuidance` (besides the two above).
        use_diffusion: whether the encoder, denoiser and diffusion exist.
        width: denoiser width, also the encoder's output size (6144 in the paper).
        encoder: keyword arguments of :class:`ImageEncoder` (besides in_channels and width).
        diffusion: keyword arguments of :class:`PriorShiftedDiffusion`.
        ema_decay: decay of the exponential moving average of the encoder and denoiser weights and
            BatchNorm statistics (ramped up, see :func:`warmup_ema`); None for no EMA (then the trained
            weights are used for sampling).
        sampling_steps: K, the number of strided reverse steps.
        eta: DDIM stochasticity of the reverse steps (0: deterministic after the initial draw).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        guidance: dict | None = None,
        use_diffusion: bool = True,
        width: int = 6144,
        encoder: dict | None = None,
        diffusion: dict | None = None,
        ema_decay: float | None = 0.9999,
        sampling_steps: int = 10,
        eta: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.use_diffusion = use_diffusion
        self.sampling_steps = sampling_steps
        self.eta = eta
        self.dcg = DualGranularityGuidance(num_classes, in_channels, **(guidance or {}))
        self.ema = None
        if use_diffusion:
            self.diffusion = PriorShiftedDiffusion(**(diffusion or {}))
            self.head = nn.ModuleDict(
                {
                    "encoder": ImageEncoder(in_channels, width, **(encoder or {})),
                    "denoiser": ConditionalDenoiser(num_classes, width, self.diffusion.num_train_timesteps),
                }
            )
            if ema_decay is not None:
                self.ema = AveragedModel(self.head, avg_fn=warmup_ema(ema_decay), use_buffers=True)
                self.ema.requires_grad_(False)  # updated by averaging, never by an optimizer

    @staticmethod
    def priors(guidance: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The class priors handed to the diffusion: softmaxes of the guidance logits."""
        return {k: torch.softmax(guidance[k], dim=1) for k in ("fused", "global", "local")}

    def update_ema(self) -> None:
        """Moves the EMA weights one step towards the trained ones (no-op without EMA)."""
        if self.ema is not None:
            self.ema.update_parameters(self.head)

    def sampling_head(self) -> nn.ModuleDict:
        """The encoder and denoiser used for sampling: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.head

    def sample(self, features: torch.Tensor, prior: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse diffusion from y_T = prior + noise down to the denoised label vector (chain in float64).

        Args:
            features: rho(x) from the sampling head's encoder, shape (B, width).
            prior: the fused prior, shape (B, num_classes).
            noise: the initial noise (B, num_classes); drawn if None.

        Returns:
            denoised label vectors, shape (B, num_classes).
        """
        denoiser = self.sampling_head()["denoiser"]
        y = prior.double() + (torch.randn_like(prior) if noise is None else noise).double()
        steps = self.diffusion.timesteps(self.sampling_steps)
        for i, t in enumerate(steps):
            t_next = steps[i + 1] if i + 1 < len(steps) else -1
            t_batch = torch.full((prior.shape[0],), t, dtype=torch.long, device=prior.device)
            eps = denoiser(features, y.to(prior.dtype), prior, t_batch)
            y, _ = self.diffusion.step(eps, t, t_next, y, prior, eta=self.eta)
        return y.to(prior.dtype)

    def predict(
        self, images: torch.Tensor, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoised prediction and the guidance priors, from one pass of every backbone.

        Returns:
            the denoised label vectors (B, num_classes) (the fused prior for ``use_diffusion=False``)
            and the priors ``fused``, ``global`` and ``local``.
        """
        priors = self.priors(self.dcg(images))
        if not self.use_diffusion:
            return priors["fused"], priors
        features = self.sampling_head()["encoder"](images)
        return self.sample(features, priors["fused"], noise), priors

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(images, noise)[0]
