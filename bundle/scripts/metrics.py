"""Whole-split classification metrics for ignite's ``EpochMetric`` (never averaged per batch)."""

from __future__ import annotations

import numpy as np
import torch
from ignite.metrics import EpochMetric
from monai.handlers import from_engine
from sklearn.metrics import accuracy_score, balanced_accuracy_score, cohen_kappa_score, f1_score

__all__ = ["accuracy", "balanced_accuracy", "macro_f1", "quadratic_kappa", "split_metric", "majority_baseline"]


def _labels(y_pred: torch.Tensor, y: torch.Tensor) -> tuple:
    return y.reshape(-1).long().cpu().numpy(), y_pred.argmax(dim=1).cpu().numpy()


def accuracy(y_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of argmax predictions equal to the class index ``y``; ``y_pred`` is (N, C)."""
    return float(accuracy_score(*_labels(y_pred, y)))


def balanced_accuracy(y_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean per-class recall."""
    return float(balanced_accuracy_score(*_labels(y_pred, y)))


def macro_f1(y_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Unweighted mean of the per-class F1 scores over the classes present in truth or prediction."""
    return float(f1_score(*_labels(y_pred, y), average="macro", zero_division=0))


def quadratic_kappa(y_pred: torch.Tensor, y: torch.Tensor) -> float:
    """Cohen's kappa with quadratic weights, for ordinal grades (APTOS, RetinaMNIST)."""
    truth, pred = _labels(y_pred, y)
    if len(set(truth) | set(pred)) < 2:
        return 0.0  # kappa is undefined when both raters use a single grade
    return float(cohen_kappa_score(truth, pred, weights="quadratic"))


METRICS = {"accuracy": accuracy, "balanced_accuracy": balanced_accuracy, "macro_f1": macro_f1, "kappa": quadratic_kappa}


def split_metric(name: str, source: str = "pred") -> EpochMetric:
    """An ignite metric over the whole split of engine outputs ``source`` (``pred`` or ``prior``) and ``label``.

    Args:
        name: one of ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``kappa`` (quadratic weighted).
        source: the output key holding (N, C) class scores.
    """
    return EpochMetric(METRICS[name], from_engine([source, "label"]), check_compute_fn=False)


def majority_baseline(labels: list[int], num_classes: int) -> dict[str, float]:
    """The metrics of always predicting the most frequent class of ``labels``."""
    y = torch.as_tensor(labels).long()
    scores = torch.zeros(len(y), num_classes)
    scores[:, int(np.bincount(y.numpy(), minlength=num_classes).argmax())] = 1.0
    return {name: fn(scores, y) for name, fn in METRICS.items()}
