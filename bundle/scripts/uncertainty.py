"""From denoised label vectors to class probabilities and per-image uncertainty.

The reverse chain ends at a label vector y0_hat near a one-hot vector, not at a probability vector: its
entries can be slightly negative or above one. The rule used everywhere (evaluation, inference, MONAI
Label, Deploy) is: clip negative entries to zero and divide by the sum; a vector with no positive entry
becomes the one-hot vector of its largest entry. The rule keeps the argmax of every vector with a
positive entry. Several samples of the same image are combined by averaging their probabilities.
"""

from __future__ import annotations

import torch

__all__ = ["label_probabilities", "summarize_samples"]


def label_probabilities(y: torch.Tensor) -> torch.Tensor:
    """Class probabilities of denoised label vectors ``y`` (..., num_classes): clip at zero, renormalise."""
    clipped = y.clamp_min(0)
    total = clipped.sum(dim=-1, keepdim=True)
    fallback = torch.nn.functional.one_hot(y.argmax(dim=-1), y.shape[-1]).to(clipped.dtype)
    return torch.where(total > 0, clipped / total.clamp_min(torch.finfo(clipped.dtype).tiny), fallback)


def summarize_samples(samples: torch.Tensor) -> dict[str, torch.Tensor]:
    """Combines S denoised samples per image.

    Args:
        samples: denoised label vectors, shape (B, S, num_classes).

    Returns:
        ``probs``: mean class probabilities (B, num_classes), whose argmax is the prediction;
        ``vote``: the majority vote of the samples' argmaxes (ties to the lower class index) (B,);
        ``agreement``: the fraction of samples that voted for ``vote`` (B,);
        ``entropy``: the predictive entropy of ``probs`` in nats (B,).
    """
    probs = label_probabilities(samples).mean(dim=1)
    counts = torch.nn.functional.one_hot(samples.argmax(dim=-1), samples.shape[-1]).sum(dim=1)
    vote = counts.argmax(dim=1)
    agreement = counts.max(dim=1).values.to(probs.dtype) / samples.shape[1]
    entropy = torch.special.entr(probs).sum(dim=1)
    return {"probs": probs, "vote": vote, "agreement": agreement, "entropy": entropy}
