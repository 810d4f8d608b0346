"""DiffMIC bundle scripts: networks, diffusion, engines and data of the bundle's configs."""

from . import (
    backbone,
    data,
    dcg,
    denoiser,
    diffusion,
    engine,
    handlers,
    inferer,
    losses,
    metrics,
    network,
    roi,
    transforms,
)

__all__ = [
    "backbone",
    "data",
    "dcg",
    "denoiser",
    "diffusion",
    "engine",
    "handlers",
    "inferer",
    "losses",
    "metrics",
    "network",
    "roi",
    "transforms",
]
