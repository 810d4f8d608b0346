"""The paper's ablation variants, in one table: what each one builds, trains and reports."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Variant", "VARIANTS", "variant"]


class Variant(NamedTuple):
    use_diffusion: bool  # the encoder, denoiser and diffusion exist (basic: the guidance model alone)
    use_local_stream: bool  # the DCG's ROI stream exists (the global stream always does)
    use_mmd: bool  # the MMD terms of the global and local streams are in the loss
    priors: tuple[str, ...]  # the priors the network computes, hence reports


VARIANTS = {
    "basic": Variant(False, False, False, ()),  # a ResNet classifier: its prediction is the guidance's
    "C1": Variant(True, False, False, ("fused",)),  # global prior only: the fused prior is the global one
    "C2": Variant(True, True, False, ("fused", "global", "local")),  # dual priors, no MMD
    "full": Variant(True, True, True, ("fused", "global", "local")),  # the paper's model
}


def variant(name: str) -> Variant:
    """The variant called ``name``; an unknown name lists the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"variant {name!r} is not one of {list(VARIANTS)}")
    return VARIANTS[name]
