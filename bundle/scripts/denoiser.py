"""The DiffMIC noise predictor and the image encoder whose features gate it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import ResNetTrunk

__all__ = ["ImageEncoder", "TimestepGatedLinear", "ConditionalDenoiser", "DiffusionHead"]


class ImageEncoder(nn.Module):
    """rho(x): a ResNet trunk's pooled features projected to the denoiser width.

    Args:
        in_channels: image channels.
        width: output size (the denoiser width; 6144 in the paper).
        trunk: keyword arguments of :class:`ResNetTrunk`.
        feature_norm: BatchNorm on the projected features (the authors' released code has it; the paper
            does not mention it).
    """

    def __init__(self, in_channels: int, width: int, trunk: dict | None = None, feature_norm: bool = False) -> None:
        super().__init__()
        self.trunk = ResNetTrunk(in_channels=in_channels, **(trunk or {}))
        self.projection = nn.Linear(self.trunk.out_channels, width)
        self.norm = nn.BatchNorm1d(width) if feature_norm else nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.projection(self.trunk(images)))


class TimestepGatedLinear(nn.Module):
    """A linear layer whose output is scaled element-wise by a learned embedding of the timestep."""

    def __init__(self, in_features: int, out_features: int, num_timesteps: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Embedding(num_timesteps, out_features)
        nn.init.uniform_(self.gate.weight)  # as in CARD: gates start in (0, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.gate(t) * self.linear(x)


class ConditionalDenoiser(nn.Module):
    """Predicts the noise in y_t from (y_t, prior), the timestep and the image features.

    concat(y_t, prior) -> gated linear -> BN -> Softplus -> Hadamard with rho(x) -> two gated
    linear + BN + Softplus layers -> linear to ``num_classes``.

    Args:
        num_classes: size of the label vector.
        width: hidden size, equal to the encoder's output size.
        num_timesteps: T, the number of diffusion timesteps.
    """

    def __init__(self, num_classes: int, width: int, num_timesteps: int) -> None:
        super().__init__()
        self.layer1 = TimestepGatedLinear(2 * num_classes, width, num_timesteps)
        self.norm1 = nn.BatchNorm1d(width)
        self.layer2 = TimestepGatedLinear(width, width, num_timesteps)
        self.norm2 = nn.BatchNorm1d(width)
        self.layer3 = TimestepGatedLinear(width, width, num_timesteps)
        self.norm3 = nn.BatchNorm1d(width)
        self.output = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor, y_t: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: rho(x), shape (B, width).
            y_t: noisy label vectors, shape (B, num_classes).
            prior: the guiding class prior, shape (B, num_classes).
            t: timesteps, shape (B,), long.

        Returns:
            the predicted noise, shape (B, num_classes).
        """
        h = F.softplus(self.norm1(self.layer1(torch.cat([y_t, prior], dim=1), t)))
        h = features * h
        h = F.softplus(self.norm2(self.layer2(h, t)))
        h = F.softplus(self.norm3(self.layer3(h, t)))
        return self.output(h)


class DiffusionHead(nn.Module):
    """The trained part of the diffusion: the image encoder rho(x) and the noise predictor.

    Sampling calls :attr:`encoder` once and :attr:`denoiser` once per step. ``forward`` is the training
    pass of one step, so that one ``DistributedDataParallel`` around this module synchronises the
    gradients of both.

    Args:
        encoder: the image encoder.
        denoiser: the noise predictor.
    """

    def __init__(self, encoder: ImageEncoder, denoiser: ConditionalDenoiser) -> None:
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser

    def forward(self, images: torch.Tensor, y_t: torch.Tensor, prior: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Predicted noise of several prior streams from one encoder pass.

        Args:
            images: shape (B, C, H, W).
            y_t: noisy label vectors, shape (streams, N, num_classes), N = B x (t, eps) draws per image,
                image-major within each draw (rows i, B + i, 2B + i, ... belong to image i).
            prior: each stream's prior, shape (streams, N, num_classes).
            t: timesteps, shape (N,).

        Returns:
            the predicted noise, shape (streams, N, num_classes); each stream is its own denoiser batch
            (its own BatchNorm statistics).
        """
        features = self.encoder(images).repeat(y_t.shape[1] // images.shape[0], 1)
        return torch.stack([self.denoiser(features, y_t[i], prior[i], t) for i in range(y_t.shape[0])])
