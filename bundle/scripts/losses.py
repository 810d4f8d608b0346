"""Loss terms of DiffMIC."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["DiffMICLoss", "rbf_mmd"]


def rbf_mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: Sequence[float] = (1.0,)) -> torch.Tensor:
    """Squared maximum mean discrepancy between two samples, with a sum of RBF kernels.

    k(a, b) = sum_s exp(-||a - b||^2 / (2 s^2)) over the bandwidths s. The biased (V-statistic)
    estimate: zero for identical samples, never negative.

    Args:
        x: one sample, shape (N, D).
        y: another sample, shape (M, D).
        bandwidths: kernel bandwidths s.

    Returns:
        a scalar tensor.
    """
    joint = torch.cat([x, y], dim=0)
    sq_dist = torch.cdist(joint, joint).pow(2)
    kernel = sum(torch.exp(-sq_dist / (2.0 * s**2)) for s in bandwidths)
    n = x.shape[0]
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


class DiffMICLoss(torch.nn.Module):
    """The diffusion loss of DiffMIC: ``loss_noise + mmd_weight * loss_mmd``.

    ``loss_noise`` is the mean squared error of the denoiser's output on the fused-prior stream against the
    regression target (the noise, or y0 for a denoiser that predicts the clean label); ``loss_mmd`` is
    ``MMD(target, global) + MMD(target, local)``, the RBF-kernel MMD of the other two streams' outputs
    against the target (:func:`rbf_mmd`).

    Args:
        mmd_weight: lambda; 0 removes the MMD terms (ablations C1 and C2): the loss then needs the fused
            stream only (:attr:`streams`) and ``loss_mmd`` is zero.
        mmd_bandwidths: RBF bandwidths of the MMD kernel.
        prior_error_weight: w; each row's squared error is weighted by ``1 + w * (1 - p_prior(true class))``
            (DiffMICv2's code uses 10: the images its prior gets wrong are those the diffusion can fix); 0:
            every row weighs the same.
    """

    def __init__(
        self, mmd_weight: float = 0.5, mmd_bandwidths: Sequence[float] = (1.0,), prior_error_weight: float = 0.0
    ) -> None:
        super().__init__()
        self.mmd_weight = mmd_weight
        self.mmd_bandwidths = tuple(mmd_bandwidths)
        self.prior_error_weight = prior_error_weight

    @property
    def streams(self) -> tuple[str, ...]:
        """The prior streams whose denoiser outputs the loss reads: the MMD terms need the global and local ones."""
        return ("fused", "global", "local") if self.mmd_weight > 0 else ("fused",)

    def forward(
        self,
        predicted: Mapping[str, torch.Tensor],
        target: torch.Tensor,
        prior: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss and its terms.

        Args:
            predicted: the denoiser's output (N, C) per stream of :attr:`streams`.
            target: the regression target (N, C).
            prior: the fused prior probabilities (N, C) the rows were noised towards; read with
                ``prior_error_weight`` only.
            labels: the true class of each row (N,); likewise.

        Returns:
            ``loss`` (the total), ``loss_noise`` and ``loss_mmd``, scalar tensors.
        """
        loss_noise = self.denoising_error(predicted["fused"], target, prior, labels)
        if self.mmd_weight == 0:
            loss_mmd = torch.zeros_like(loss_noise)
        else:
            loss_mmd = rbf_mmd(target, predicted["global"], self.mmd_bandwidths) + rbf_mmd(
                target, predicted["local"], self.mmd_bandwidths
            )
        return {"loss": loss_noise + self.mmd_weight * loss_mmd, "loss_noise": loss_noise, "loss_mmd": loss_mmd}

    def denoising_error(
        self,
        predicted: torch.Tensor,
        target: torch.Tensor,
        prior: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The mean squared error, each row weighted by its prior's miss when ``prior_error_weight`` is set."""
        if not self.prior_error_weight:
            return F.mse_loss(predicted, target)
        if prior is None or labels is None:
            raise ValueError("prior_error_weight weights each row by its prior's miss: pass prior and labels")
        prior_true = prior.gather(1, labels[:, None]).squeeze(1)
        weights = 1.0 + self.prior_error_weight * (1.0 - prior_true)
        return (weights * (predicted - target).square().mean(1)).mean()

    def extra_repr(self) -> str:
        return (
            f"mmd_weight={self.mmd_weight}, mmd_bandwidths={self.mmd_bandwidths}, "
            f"prior_error_weight={self.prior_error_weight}"
        )
