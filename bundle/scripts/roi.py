"""Retrieval of the most salient regions of interest (ROIs) from a class saliency map."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["normalized_saliency", "select_windows", "crop_windows"]


def normalized_saliency(saliency: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Min-max normalises each class map per image, sums the classes and resizes to the image.

    Args:
        saliency: class saliency maps, shape (B, num_classes, h, w).
        image_size: (H, W) of the input image.

    Returns:
        one map per image, shape (B, H, W).
    """
    flat = saliency.flatten(2)
    low = flat.min(dim=2, keepdim=True).values
    high = flat.max(dim=2, keepdim=True).values
    flat = (flat - low) / (high - low).clamp_min(1e-8)
    summed = flat.sum(dim=1).view(saliency.shape[0], 1, saliency.shape[2], saliency.shape[3])
    return F.interpolate(summed, size=image_size, mode="bilinear", align_corners=False)[:, 0]


def select_windows(saliency: torch.Tensor, num_windows: int, window: int) -> torch.Tensor:
    """Greedily takes the ``num_windows`` non-overlapping square windows of highest mean saliency.

    Each pick excludes every window that would overlap it. When no non-overlapping window is left
    (K windows that cannot be packed into the image), the best remaining one is taken anyway, so the
    output always has K windows.

    Args:
        saliency: one map per image, shape (B, H, W).
        num_windows: K, the number of windows per image.
        window: the side of a square window, in pixels.

    Returns:
        top-left corners (row, column), shape (B, K, 2), long.
    """
    batch, height, width = saliency.shape
    if window > height or window > width:
        raise ValueError(f"ROI window {window} px is larger than the {height}x{width} image")
    score = F.avg_pool2d(saliency[:, None], kernel_size=window, stride=1)[:, 0]  # (B, H-w+1, W-w+1)
    rows, cols = score.shape[1], score.shape[2]
    available = torch.ones_like(score, dtype=torch.bool)
    corners = []
    for _ in range(num_windows):
        masked = score.masked_fill(~available, float("-inf")).flatten(1)
        none_left = torch.isinf(masked).all(dim=1, keepdim=True)
        masked = torch.where(none_left, score.flatten(1), masked)
        best = masked.argmax(dim=1)
        r, c = best // cols, best % cols
        corners.append(torch.stack([r, c], dim=1))
        # windows whose corner lies within `window` pixels of this one overlap it
        rr = torch.arange(rows, device=score.device).view(1, rows, 1)
        cc = torch.arange(cols, device=score.device).view(1, 1, cols)
        overlap = ((rr - r.view(-1, 1, 1)).abs() < window) & ((cc - c.view(-1, 1, 1)).abs() < window)
        available = available & ~overlap
    return torch.stack(corners, dim=1)


def crop_windows(images: torch.Tensor, corners: torch.Tensor, window: int) -> torch.Tensor:
    """Crops square windows from every channel of the images.

    Args:
        images: shape (B, C, H, W).
        corners: top-left corners, shape (B, K, 2).
        window: side of the windows in pixels.

    Returns:
        crops, shape (B, K, C, window, window).
    """
    offsets = torch.arange(window, device=images.device)
    rows = (corners[..., 0:1] + offsets).unsqueeze(-1)  # (B, K, w, 1)
    cols = (corners[..., 1:2] + offsets).unsqueeze(-2)  # (B, K, 1, w)
    batch_index = torch.arange(images.shape[0], device=images.device).view(-1, 1, 1, 1)
    crops = images.permute(0, 2, 3, 1)[batch_index, rows, cols]  # (B, K, w, w, C)
    return crops.permute(0, 1, 4, 2, 3)
