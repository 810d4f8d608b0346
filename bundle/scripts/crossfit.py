"""Cross-fitted priors: each training image's prior comes from a copy of the DCG that never trained on it.

The denoiser learns to map a prior to the label. If the DCG that gives the priors also fits the same training
images with cross-entropy, their priors are right, and confident, far more often than those of validation or
test images, so copying the prior is what minimises the denoising loss (``docs/benchmarks.md``: the denoiser
copies its prior). Cross-fitting splits the training images into k folds; copy j of the DCG trains on every fold
but j and gives fold j's images their priors, in eval mode as validation computes them. Validation, test and
inference keep the priors of the network's own DCG, trained on all training images: the copies live only in
training (and in its latest checkpoint), not in ``model.pt``.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["FoldGuidance", "assign_folds"]


def assign_folds(items: Sequence[dict], folds: int, seed: int) -> dict[str, int]:
    """Each item's fold, ``{id: 0..folds-1}``: a shuffled round robin within each label, so that every fold holds
    each class in proportion and the fold sizes differ by one at most. Its own generator: the global random
    state, which seeds training, is not touched."""
    by_label: dict[int, list[str]] = defaultdict(list)
    for item in items:
        by_label[int(item["label"])].append(str(item["id"]))
    rng = np.random.default_rng(seed)
    fold_of, position = {}, 0
    for label in sorted(by_label):
        ids = sorted(by_label[label])
        rng.shuffle(ids)
        for image_id in ids:
            fold_of[image_id] = position % folds
            position += 1
    return fold_of


class FoldGuidance(nn.Module):
    """k copies of the DCG for cross-fitted training priors (``prior_folds`` in train.yaml).

    Args:
        dcg: the network's DCG; each copy starts from its weights (pretrained trunks included).
        folds: k >= 2; 0 for no cross-fitting: the module is then empty and the trainer conditions the denoiser
            on the DCG's own priors.
        items: the training datalist (items with ``id`` and ``label``), split into the k folds by
            :func:`assign_folds`.
        seed: the seed of that split.
    """

    def __init__(self, dcg: nn.Module, folds: int, items: Sequence[dict], seed: int = 0) -> None:
        super().__init__()
        if folds == 1 or folds < 0:
            raise ValueError(f"prior_folds must be 0 (no cross-fitting) or at least 2, got {folds}")
        if folds and torch.distributed.is_available() and torch.distributed.is_initialized():
            if torch.distributed.get_world_size() > 1:  # each process would train its copies apart
                raise ValueError("prior_folds is not supported in multi-GPU training yet: train on one GPU or set 0")
        self.copies = nn.ModuleList(copy.deepcopy(dcg) for _ in range(folds))
        self.fold_of = assign_folds(items, folds, seed) if folds else {}

    @property
    def active(self) -> bool:
        return len(self.copies) > 0

    def folds(self, ids: Sequence[str], device: torch.device) -> torch.Tensor:
        """The fold of each image of a batch, from its datalist id."""
        unknown = [i for i in ids if str(i) not in self.fold_of]
        if unknown:
            raise KeyError(
                f"{len(unknown)} training image id(s) not in the split that prior_folds cross-fits, e.g. "
                f"{unknown[:3]}: the training datalist changed after the folds were drawn; start a new training"
            )
        return torch.tensor([self.fold_of[str(i)] for i in ids], device=device)

    def training_outputs(
        self, images: torch.Tensor, folds: torch.Tensor, forward: Callable[[nn.Module, torch.Tensor], dict]
    ) -> list[tuple[torch.Tensor, dict]]:
        """Each copy's DCG outputs on the batch's images outside its fold, with the rows they are: what its
        cross-entropy step reads. A copy with fewer than 2 such images (BatchNorm needs 2) sits out the step.

        Args:
            forward: runs a DCG on images (the trainer's inferer, under its autocast).
        """
        outputs = []
        for j, dcg in enumerate(self.copies):
            rows = torch.nonzero(folds != j).flatten()
            if rows.numel() >= 2:
                outputs.append((rows, forward(dcg, images[rows])))
        return outputs

    @torch.no_grad()
    def priors(
        self, images: torch.Tensor, folds: torch.Tensor, forward: Callable[[nn.Module, torch.Tensor], dict]
    ) -> dict[str, torch.Tensor]:
        """The out-of-fold priors of a batch: each image's softmaxes (fused, global, local) from the copy that did
        not train on it, in eval mode (running BatchNorm statistics), as validation computes priors."""
        priors: dict[str, torch.Tensor] = {}
        for j, dcg in enumerate(self.copies):
            rows = torch.nonzero(folds == j).flatten()
            if not rows.numel():
                continue
            was_training = dcg.training
            dcg.eval()
            out = forward(dcg, images[rows])
            dcg.train(was_training)
            for key in ("fused", "global", "local"):
                if key not in priors:
                    priors[key] = images.new_zeros(images.shape[0], out[key].shape[1], dtype=torch.float32)
                priors[key][rows] = torch.softmax(out[key].float(), dim=1)
        return priors
