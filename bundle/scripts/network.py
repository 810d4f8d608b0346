"""DiffMIC as one module: guidance (DCG), image encoder, denoiser, its EMA copy, and sampling."""

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .dcg import DualGranularityGuidance
from .denoiser import ConditionalDenoiser, DiffusionHead, ImageEncoder
from .diffusion import PriorShiftedDiffusion
from .scheduler import ReverseScheduler

__all__ = ["DiffMIC", "ExponentialMovingAverage", "warmup_ema"]


def warmup_ema(decay: float):
    """An ``AveragedModel`` ``multi_avg_fn``: EMA whose decay ramps up as min(decay, (1 + n) / (10 + n)).

    A fixed decay averages the first, fast-changing weights for too long: with 0.99, a few hundred steps
    in (all a CPU run has), the average still mixes weights that no longer agree with each other or with
    the averaged BatchNorm statistics, and it samples far worse than the trained weights. The update is
    one foreach ``lerp`` per device and dtype, not a Python function per tensor: on one CPU thread that
    took an update of the encoder + denoiser from 98 to 14 ms at width 512 and from 1.3 s to 77 ms at 6144.
    """

    @torch.no_grad()
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if averaged[0].is_floating_point():
            torch._foreach_lerp_(averaged, current, weight)  # what torch's own get_ema_multi_avg_fn runs
        else:  # BatchNorm's num_batches_tracked, unused with a fixed momentum: keep the trained count
            torch._foreach_copy_(averaged, current)

    return average


class ExponentialMovingAverage(AveragedModel):
    """torch's ``AveragedModel`` (weights and BatchNorm buffers averaged) that TorchScript can compile.

    DiffMIC reads the averaged head through :attr:`module` and never calls this module, so its
    ``forward`` (variadic in ``AveragedModel``, which TorchScript cannot compile) is left out of scripts.
    """

    n_averaged: torch.Tensor  # AveragedModel's own annotation is a string TorchScript cannot resolve

    @torch.jit.unused
    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: D102 - never called, see above
        raise NotImplementedError("read the averaged modules through .module")


class DiffMIC(nn.Module):
    """The DiffMIC classifier (Yang et al., MICCAI 2023).

    ``forward(images)`` returns one denoised label vector per image: reverse diffusion from
    N(prior, I) with :attr:`scheduler` (10 DDIM steps by default), with the EMA head when there is one.
    With ``use_diffusion=False`` (the ``basic`` ablation) it returns the softmax of the guidance logits.
    The module compiles with ``torch.jit.script``: ``forward``, :meth:`predict` and :meth:`chain_noise_draws`
    (all an inferer needs) run the whole reverse sampling in TorchScript.

    The steps of a caller that does not need :meth:`predict`'s saliency: :meth:`prior` (the fused DCG prior),
    :meth:`features` (rho(x)), then :meth:`sample` with :meth:`chain_noise_draws` draws per chain.

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
        scheduler: keyword arguments of :class:`ReverseScheduler` (name, steps, eta); it is not part of
            the trained state, so evaluation may choose another one for the same checkpoint
            (:meth:`set_scheduler`).
    """

    __constants__ = ["use_diffusion", "has_ema"]  # TorchScript compiles only the parts a network has

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
        scheduler: dict | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.use_diffusion = use_diffusion
        self.has_ema = use_diffusion and ema_decay is not None
        self.dcg = DualGranularityGuidance(num_classes, in_channels, **(guidance or {}))
        self.ema = None
        if use_diffusion:
            self.diffusion = PriorShiftedDiffusion(**(diffusion or {}))
            self.head = DiffusionHead(
                ImageEncoder(in_channels, width, **(encoder or {})),
                ConditionalDenoiser(num_classes, width, self.diffusion.num_train_timesteps),
            )
            if ema_decay is not None:
                self.ema = ExponentialMovingAverage(self.head, multi_avg_fn=warmup_ema(ema_decay), use_buffers=True)
                self.ema.requires_grad_(False)  # updated by averaging, never by an optimizer
        self.scheduler: ReverseScheduler | None = None  # basic: no chain
        self.set_scheduler(**(scheduler or {}))

    def set_scheduler(self, name: str = "ddim", steps: int = 10, eta: float = 0.0) -> None:
        """Makes a :class:`ReverseScheduler` with these settings the reverse chain of :meth:`sample` (a script
        keeps the chain it was compiled with); no-op without diffusion."""
        if self.use_diffusion:
            self.scheduler = ReverseScheduler(self.diffusion, name, steps, eta)

    @staticmethod
    def priors(guidance: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The class priors handed to the diffusion: softmaxes of the guidance logits."""
        return {k: torch.softmax(guidance[k], dim=1) for k in ("fused", "global", "local")}

    def prior(self, images: torch.Tensor) -> torch.Tensor:
        """The fused DCG prior (B, num_classes) the reverse chain starts from."""
        return torch.softmax(self.dcg(images)["fused"], dim=1)

    def update_ema(self) -> None:
        """Moves the EMA weights one step towards the trained ones (no-op without EMA)."""
        if self.ema is not None:
            self.ema.update_parameters(self.head)

    # The sampling head (the EMA copy when there is one, else the trained head) is read only by the two methods
    # below. TorchScript cannot return a submodule from a method, so each picks it with the constant ``has_ema``.

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """rho(x) (B, width) from the sampling head's encoder (the EMA copy when there is one)."""
        if self.has_ema:
            return self.ema.module.encoder(images)
        return self.head.encoder(images)

    def denoise(self, features: torch.Tensor, y_t: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The sampling head's denoiser output for y_t at timesteps t: the noise, or y0 (``prediction_type``)."""
        if self.has_ema:
            return self.ema.module.denoiser(features, y_t, prior, t)
        return self.head.denoiser(features, y_t, prior, t)

    @torch.jit.export
    def chain_noise_draws(self) -> int:
        """Standard normal vectors one reverse chain of :attr:`scheduler` consumes (1 without diffusion).

        Not ``noise_draws``: that is the training setting, (t, eps) draws per image per denoiser step. model.ts
        files exported before the rename (bundle 0.4.0 and earlier) call this method ``noise_draws``."""
        if self.use_diffusion:
            return self.scheduler.num_draws
        return 1

    def sample(
        self, features: torch.Tensor, prior: torch.Tensor, noise: torch.Tensor, trajectory: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Reverse diffusion of S chains per image, batched into one pass per step.

        Every step runs in float64 (see :meth:`ReverseScheduler.step`).

        Args:
            features: rho(x), :meth:`features`, shape (B, width).
            prior: the fused prior, :meth:`prior`, shape (B, num_classes).
            noise: standard normal draws, shape (B, S, :meth:`chain_noise_draws`, num_classes): the initial
                draw, then one per noisy step.
            trajectory: whether to return the visited states too.

        Returns:
            denoised label vectors (B, S, num_classes), in ``prior``'s dtype, and, if asked for, the
            states at every visited timestep, each (B, S, num_classes) in float64 (from y_T to y0).
        """
        batch, samples, draws = noise.shape[0], noise.shape[1], self.chain_noise_draws()
        if noise.dim() != 4 or noise.shape[2] != draws or noise.shape[3] != prior.shape[1]:
            expected = f"({batch}, {samples}, {draws}, {prior.shape[1]})"
            raise ValueError(f"the chain needs noise of shape {expected}, got {noise.shape}")
        features = features.repeat_interleave(samples, dim=0)
        prior = prior.repeat_interleave(samples, dim=0)
        noise = noise.flatten(0, 1)
        y = prior.double() + noise[:, 0].double()
        path: list[torch.Tensor] = [y] if trajectory else []
        steps = self.scheduler.timesteps
        for i in range(len(steps)):
            t_next = steps[i + 1] if i + 1 < len(steps) else -1
            t = torch.full([prior.shape[0]], steps[i], dtype=torch.long, device=prior.device)
            output = self.denoise(features, y.to(prior.dtype), prior, t)
            step_noise: torch.Tensor | None = None
            if self.scheduler.eta > 0 and t_next >= 0:
                step_noise = noise[:, i + 1]
            prediction_type, eta = self.diffusion.prediction_type, self.scheduler.eta
            y = self.scheduler.step(output, steps[i], t_next, y, prior, prediction_type, eta, step_noise)[0]
            if trajectory:
                path.append(y)
        return y.to(prior.dtype).view(batch, samples, -1), [p.view(batch, samples, -1) for p in path]

    @torch.jit.export
    def predict(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Denoised samples, the guidance priors and the saliency, from one pass of every backbone.

        Args:
            images: shape (B, C, H, W).
            noise: the chains' standard normal draws (B, S, :meth:`chain_noise_draws`, num_classes); one
                chain per image, freshly drawn, if None.

        Returns:
            ``denoised``: (B, S, num_classes) label vectors (the fused prior repeated without diffusion);
            ``fused``, ``global``, ``local``: prior probabilities (B, num_classes); ``saliency`` and
            ``rois``: the DCG's class saliency maps and ROI corners.
        """
        guidance = self.dcg(images)
        out = self.priors(guidance)
        out["saliency"] = guidance["saliency"]
        out["rois"] = guidance["rois"]
        if noise is None:
            noise = torch.randn(images.shape[0], 1, self.chain_noise_draws(), self.num_classes, device=images.device)
        if self.use_diffusion:
            out["denoised"] = self.sample(self.features(images), out["fused"], noise)[0]
        else:
            out["denoised"] = out["fused"].unsqueeze(1).expand(-1, noise.shape[1], -1)
        return out

    def forward(self, images: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One denoised label vector per image (B, num_classes): the first chain of :meth:`predict`."""
        return self.predict(images, noise)["denoised"][:, 0]
