"""Dual-granularity Conditional Guidance (DCG): the global and local class priors of DiffMIC."""

from __future__ import annotations

import torch
from torch import nn

from .backbone import ResNetTrunk
from .roi import crop_windows, normalized_saliency, select_windows

__all__ = ["GatedAttentionMIL", "DualGranularityGuidance"]


class GatedAttentionMIL(nn.Module):
    """Gated-attention multiple-instance pooling (Ilse et al., 2018).

    ``a_k = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))``, pooled = sum_k a_k h_k.

    Args:
        in_features: size of an instance embedding h_k.
        attention_dim: hidden size of V and U.
    """

    def __init__(self, in_features: int, attention_dim: int = 128) -> None:
        super().__init__()
        self.attention_v = nn.Linear(in_features, attention_dim)
        self.attention_u = nn.Linear(in_features, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)

    def forward(self, instances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            instances: shape (B, K, in_features).

        Returns:
            the pooled embedding (B, in_features) and the attention weights (B, K).
        """
        gate = torch.tanh(self.attention_v(instances)) * torch.sigmoid(self.attention_u(instances))
        attention = torch.softmax(self.attention_w(gate).squeeze(-1), dim=1)
        return torch.einsum("bk,bkf->bf", attention, instances), attention


class DualGranularityGuidance(nn.Module):
    """The DCG model: a global prior from a saliency map and a local prior from its ROIs.

    Global stream: ResNet trunk -> 1x1 conv to ``num_classes`` (the saliency map) -> spatial mean.
    Local stream: the ``num_rois`` most salient non-overlapping ``roi_size`` windows, cropped from
    the image, through a second ResNet trunk -> gated-attention MIL -> linear. Fused logits are the
    mean of both. Without the local stream (ablation C1, and the ``basic`` ResNet classifier, for
    which global pooling then a linear layer is exactly the 1x1 conv then the spatial mean) the
    fused logits are the global ones.

    Args:
        num_classes: number of classes.
        in_channels: image channels.
        global_trunk: keyword arguments of the global :class:`ResNetTrunk`.
        use_local_stream: whether the ROI stream exists.
        local_trunk: keyword arguments of the local :class:`ResNetTrunk`.
        num_rois: K, the number of ROI crops.
        roi_size: side of an ROI crop in pixels.
        attention_dim: hidden size of the MIL attention.
    """

    __constants__ = ["use_local_stream"]

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        global_trunk: dict | None = None,
        use_local_stream: bool = True,
        local_trunk: dict | None = None,
        num_rois: int = 6,
        roi_size: int = 32,
        attention_dim: int = 128,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.use_local_stream = use_local_stream
        self.num_rois = num_rois
        self.roi_size = roi_size
        self.global_trunk = ResNetTrunk(in_channels=in_channels, **(global_trunk or {}))
        self.saliency = nn.Conv2d(self.global_trunk.out_channels, num_classes, kernel_size=1)
        if use_local_stream:
            self.local_trunk = ResNetTrunk(in_channels=in_channels, **(local_trunk or {}))
            self.mil = GatedAttentionMIL(self.local_trunk.out_channels, attention_dim)
            self.local_classifier = nn.Linear(self.local_trunk.out_channels, num_classes)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """
        Args:
            images: shape (B, C, H, W).

        Returns:
            ``global``, ``local`` and ``fused`` logits (B, num_classes); ``saliency`` (B, num_classes, h, w);
            ``rois``, the top-left corners of the crops (B, K, 2) (empty without the local stream);
            ``attention``, the MIL weights (B, K).
        """
        saliency = self.saliency(self.global_trunk.feature_map(images))
        global_logits = saliency.mean(dim=(2, 3))
        out = {"global": global_logits, "fused": global_logits, "local": global_logits, "saliency": saliency}
        if self.use_local_stream:  # a constant: TorchScript compiles only the branch this network has
            local_logits, corners, attention = self.local_stream(images, saliency)
            out["local"] = local_logits
            out["fused"] = (global_logits + local_logits) / 2
            out["rois"] = corners
            out["attention"] = attention
        else:
            out["rois"] = images.new_zeros(images.shape[0], 0, 2).long()
            out["attention"] = images.new_zeros(images.shape[0], 0)
        return out

    def local_stream(
        self, images: torch.Tensor, saliency: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Local logits (B, num_classes), ROI corners (B, K, 2) and MIL weights (B, K) of the images."""
        # ROI selection is a discrete choice: no gradient flows through it (detach, not no_grad, which
        # TorchScript cannot compile around values used after the block)
        heat = normalized_saliency(saliency.detach(), (images.shape[2], images.shape[3]))
        corners = select_windows(heat, self.num_rois, self.roi_size)
        crops = crop_windows(images, corners, self.roi_size)  # (B, K, C, s, s)
        batch, k = crops.shape[0], crops.shape[1]
        embeddings = self.local_trunk(crops.flatten(0, 1)).view(batch, k, -1)
        pooled, attention = self.mil(embeddings)
        return self.local_classifier(pooled), corners, attention
