"""DiffMIC as one module: guidance (DCG), image encoder, denoiser, its EMA copy, and sampling."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .dcg import DualGranularityGuidance
from .denoiser import ConditionalDenoiser, ImageEncoder
from .diffusion import PriorShiftedDiffusion
from .sampler import ReverseSampler

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

    ``forward(images)`` returns one denoised label vector per image: reverse diffusion from
    N(prior, I) with ``sampler`` (10 DDIM steps by default), with the EMA head when there is one.
    With ``use_diffusion=False`` (the ``basic`` ablation) it returns the softmax of the guidance logits.

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
        sampler: keyword arguments of :class:`ReverseSampler` (name, steps, eta); it is not part of
            the trained state, so evaluation may change it.
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
        sampler: dict | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.use_diffusion = use_diffusion
        self.sampler = ReverseSampler(**(sampler or {}))
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

    def noise_draws(self) -> int:
        """Standard normal vectors one reverse chain of :attr:`sampler` consumes (1 without diffusion)."""
        return self.sampler.num_draws(self.diffusion) if self.use_diffusion else 1

    def sample(
        self, features: torch.Tensor, prior: torch.Tensor, noise: torch.Tensor, trajectory: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Reverse diffusion of S chains per image, batched into one pass per step.

        Args:
            features: rho(x) from the sampling head's encoder, shape (B, width).
            prior: the fused prior, shape (B, num_classes).
            noise: standard normal draws, shape (B, S, :meth:`noise_draws`, num_classes).
            trajectory: whether to return the visited states too.

        Returns:
            denoised label vectors (B, S, num_classes) and, if asked for, the states at every visited
            timestep, each (B, S, num_classes) (from y_T to y0).
        """
        batch, samples = noise.shape[:2]
        y, path = self.sampler(
            self.diffusion,
            self.sampling_head()["denoiser"],
            features.repeat_interleave(samples, dim=0),
            prior.repeat_interleave(samples, dim=0),
            noise.flatten(0, 1),
            trajectory,
        )
        return y.view(batch, samples, -1), [p.view(batch, samples, -1) for p in path]

    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Denoised samples, the guidance priors and the saliency, from one pass of every backbone.

        Args:
            images: shape (B, C, H, W).
            noise: the chains' standard normal draws (B, S, :meth:`noise_draws`, num_classes); one
                chain per image, freshly drawn, if None.

        Returns:
            ``denoised``: (B, S, num_classes) label vectors (the fused prior repeated without diffusion);
            ``fused``, ``global``, ``local``: prior probabilities (B, num_classes); ``saliency`` and
            ``rois``: the DCG's class saliency maps and ROI corners.
        """
        guidance = self.dcg(images)
        out = {**self.priors(guidance), "saliency": guidance["saliency"], "rois": guidance["rois"]}
        if noise is None:
            noise = torch.randn(images.shape[0], 1, self.noise_draws(), self.num_classes, device=images.device)
        if not self.use_diffusion:
            out["denoised"] = out["fused"].unsqueeze(1).expand(-1, noise.shape[1], -1)
            return out
        features = self.sampling_head()["encoder"](images)
        out["denoised"] = self.sample(features, out["fused"], noise)[0]
        return out

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(images, noise)["denoised"][:, 0]
