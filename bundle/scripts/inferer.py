"""Reverse-diffusion inference with noise seeded per image, several samples per image and their summary."""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import torch
from monai.data import MetaTensor
from monai.inferers import Inferer
from torch import nn

from .uncertainty import summarize_samples

__all__ = ["ID_META_KEY", "DiffMICInferer", "chain_noise_draws", "unwrap"]

ID_META_KEY = "image_id"
"""The image metadata entry that holds the image id when the inferer is called without ``ids`` (MONAI Deploy's
bundle operator calls it with the preprocessed image only; integrations/monai_deploy's loader sets the entry)."""


def unwrap(network) -> nn.Module:
    """The DiffMIC module inside a DistributedDataParallel/DataParallel wrapper, or inside a model object of
    MONAI Deploy's app context (``TorchScriptModel``: the module is its ``predictor``)."""
    if isinstance(network, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return network.module
    if not isinstance(network, nn.Module) and isinstance(getattr(network, "predictor", None), nn.Module):
        return network.predictor
    return network


def chain_noise_draws(model: nn.Module) -> int:
    """Standard normal vectors one reverse chain of ``model`` consumes: :meth:`DiffMIC.chain_noise_draws`, or
    ``noise_draws`` in a model.ts exported before that rename (bundle 0.4.0 and earlier)."""
    if hasattr(model, "chain_noise_draws"):
        return model.chain_noise_draws()
    return model.noise_draws()


def _meta_ids(inputs: torch.Tensor) -> list[str] | None:
    """The image ids in the metadata of a MetaTensor batch (``ID_META_KEY``), or None."""
    ids = inputs.meta.get(ID_META_KEY) if isinstance(inputs, MetaTensor) else None
    if ids is None:
        return None
    return [str(ids)] if isinstance(ids, str) else [str(i) for i in ids]


class DiffMICInferer(Inferer):
    """Runs DiffMIC's reverse sampling and returns the mean class probabilities of the denoised samples.

    Every standard normal draw of an image's chains comes from a generator seeded with
    ``(seed, image id)``, so a prediction does not depend on batch size, batch order or the process
    that computed it. The ``num_samples`` chains of a batch run as one batch of B x S rows; the
    backbones run once per image.

    This is the one place the chains' noise is drawn (callers that run :meth:`DiffMIC.sample` themselves take it
    from :meth:`noise`). It is not in the network: the seed comes from the image id (``zlib.crc32``, which
    TorchScript cannot compile), and a network exported to TorchScript (model.ts) keeps only compiled methods, so
    the network, eager or TorchScript, only consumes the noise it is given.

    Args:
        seed: the sampling seed.
        num_samples: S, reverse chains per image (their probabilities are averaged; their spread is
            the per-image uncertainty).
    """

    def __init__(self, seed: int = 0, num_samples: int = 1) -> None:
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        self.seed = seed
        self.num_samples = num_samples

    def noise(self, ids: Sequence[str], draws: int, num_classes: int, device: torch.device) -> torch.Tensor:
        """Standard normal draws (len(ids), num_samples, draws, num_classes), one seeded generator per id; ``draws``:
        :func:`chain_noise_draws` of the network, for the chains it runs."""
        rows = []
        for image_id in ids:
            generator = torch.Generator().manual_seed(zlib.crc32(f"{self.seed}:{image_id}".encode()))
            rows.append(torch.randn(self.num_samples, draws, num_classes, generator=generator))
        return torch.stack(rows).to(device)

    def outputs(self, inputs: torch.Tensor, network: nn.Module, ids: Sequence | None = None) -> dict[str, torch.Tensor]:
        """Everything one pass gives about a batch; ``ids`` default to those in a MetaTensor's metadata
        (``ID_META_KEY``), else to the batch positions.

        Returns:
            the outputs of :meth:`DiffMIC.predict` (``denoised`` samples (B, S, C), the priors, the
            saliency and ROIs) and their summary (:func:`summarize_samples`: ``probs``, ``vote``,
            ``agreement``, ``entropy``).
        """
        model = unwrap(network)
        if ids is None:
            ids = _meta_ids(inputs)
        ids = [str(i) for i in range(inputs.shape[0])] if ids is None else [str(i) for i in ids]
        if isinstance(inputs, MetaTensor):
            inputs = inputs.as_tensor()
        if len(ids) != inputs.shape[0]:
            raise ValueError(f"{len(ids)} image ids for a batch of {inputs.shape[0]} images")
        out = model.predict(inputs, self.noise(ids, chain_noise_draws(model), model.num_classes, inputs.device))
        out.update(summarize_samples(out["denoised"]))
        return out

    def __call__(self, inputs: torch.Tensor, network: nn.Module, *args, **kwargs) -> torch.Tensor:
        """Mean class probabilities (B, num_classes); pass ``ids=`` (or a MetaTensor with ``ID_META_KEY`` in its
        metadata) to seed by image identifier."""
        return self.outputs(inputs, network, kwargs.get("ids"))["probs"]
