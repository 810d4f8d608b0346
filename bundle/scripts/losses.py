"""Loss terms of DiffMIC."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["rbf_mmd"]


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
