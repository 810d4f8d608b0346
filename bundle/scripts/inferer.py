"""Reverse-diffusion inference with noise seeded per image."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from monai.inferers import Inferer
from torch import nn

__all__ = ["DiffMICInferer", "unwrap"]


def unwrap(network: nn.Module) -> nn.Module:
    """The DiffMIC module inside a DistributedDataParallel/DataParallel wrapper."""
    return network.module if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else network


class DiffMICInferer(Inferer):
    """Runs DiffMIC's reverse sampling and returns the denoised label vectors.

    The initial noise of each image is drawn from a generator seeded with ``(seed, image id)``, so a
    prediction does not depend on batch size, batch order or the process that computed it.

    Args:
        seed: the sampling seed.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed

    def initial_noise(self, ids: Sequence[str], num_classes: int, device: torch.device) -> torch.Tensor:
        """Standard normal noise (len(ids), num_classes), one seeded generator per image id."""
        rows = []
        for image_id in ids:
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{image_id}".encode()))
            rows.append(torch.randn(num_classes, generator=generator))
        return torch.stack(rows).to(device)

    def predict(
        self, inputs: torch.Tensor, network: nn.Module, ids: Sequence[str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Denoised label vectors and the guidance priors; ``ids`` default to the batch positions."""
        model = unwrap(network)
        ids = [str(i) for i in range(inputs.shape[0])] if ids is None else [str(i) for i in ids]
        noise = self.initial_noise(ids, model.num_classes, inputs.device)
        return model.predict(inputs, noise)

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        return self.predict(inputs, network, kwargs.get("ids"))[0]
