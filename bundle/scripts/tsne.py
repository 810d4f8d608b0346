"""The paper's Figure 2: t-SNE of the label vectors along the reverse chain, coloured by true class."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from sklearn.manifold import TSNE
from torch import nn

from .figures import save_figure, tsne_figure
from .inferer import DiffMICInferer, unwrap
from .results import report_written

__all__ = ["reverse_chain_states", "reverse_chain_tsne"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def reverse_chain_states(
    network: nn.Module, inferer: DiffMICInferer, dataloader: Iterable[dict], device: torch.device, max_images: int
) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """The label vectors of every image at every timestep its first reverse chain visits.

    The chain and its noise are the ones evaluation uses (the network's scheduler, noise seeded per image id).

    Returns:
        one (N, num_classes) array per visited state (y_T first, y0 last), the N true labels, and a name
        for each state.
    """
    model = unwrap(network)
    if not model.use_diffusion:
        raise ValueError("the t-SNE of the reverse chain needs a diffusion variant (C1, C2 or full), not basic")
    model.eval()
    states, labels, seen = [], [], 0
    for batch in dataloader:
        images = batch["image"][: max_images - seen].to(device)
        ids = list(batch["id"])[: images.shape[0]]
        noise = inferer.noise(ids, model.chain_noise_draws(), model.num_classes, device)[:, :1]
        _, path = model.sample(model.features(images), model.prior(images), noise, trajectory=True)
        states.append(torch.stack([p[:, 0] for p in path]).cpu())
        labels.append(torch.as_tensor(batch["label"]).reshape(-1)[: images.shape[0]])
        seen += images.shape[0]
        if seen >= max_images:
            break
    steps = model.scheduler.timesteps
    names = [f"t = {steps[0]} (start)"] + [f"t = {t}" for t in steps[1:]] + ["denoised y0"]
    stacked = torch.cat(states, dim=1).numpy()
    return list(stacked), torch.cat(labels).long().numpy(), names


def reverse_chain_tsne(
    network: nn.Module,
    inferer: DiffMICInferer,
    dataloader: Iterable[dict],
    device: torch.device,
    class_names: Sequence[str],
    path: str,
    panels: int = 5,
    max_images: int = 1000,
    seed: int = 0,
) -> str:
    """Draws ``panels`` t-SNE scatters of the chain's states, evenly spaced from y_T to y0, as one PNG.

    Returns:
        ``path``.
    """
    logger.info(f"t-SNE: running the reverse chain on at most {max_images} images")
    states, labels, names = reverse_chain_states(network, inferer, dataloader, device, max_images)
    if len(labels) < 3:
        raise ValueError(f"t-SNE needs at least 3 images, got {len(labels)}")
    chosen = sorted({int(round(i)) for i in np.linspace(0, len(states) - 1, min(panels, len(states)))})
    perplexity = min(30.0, (len(labels) - 1) / 3)
    logger.info(f"t-SNE: embedding {len(chosen)} chain states of {len(labels)} images")
    embeddings = [
        TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(states[i])
        for i in chosen
    ]
    save_figure(tsne_figure(embeddings, labels, class_names, [names[i] for i in chosen]), path)
    report_written(os.path.dirname(path), [os.path.basename(path)])
    return path
