"""Whole-split classification, calibration and uncertainty metrics (never averaged per batch).

Scores are (N, C) class probabilities (or any scores whose argmax is the prediction, for the
argmax-based metrics); labels are (N,) class indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import EpochMetric
from monai.handlers import from_engine
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from .distributed import gather_rows

__all__ = [
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "quadratic_kappa",
    "macro_auc",
    "tied_pair_fraction",
    "ranking_report",
    "calibration_bins",
    "expected_calibration_error",
    "classification_report",
    "uncertainty_report",
    "split_metric",
    "majority_baseline",
]


def _numpy(y_pred: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = y_pred.detach().cpu().double().numpy() if isinstance(y_pred, torch.Tensor) else np.asarray(y_pred, float)
    truth = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    return scores, truth.reshape(-1).astype(int)


def _labels(y_pred, y) -> tuple[np.ndarray, np.ndarray]:
    scores, truth = _numpy(y_pred, y)
    return truth, scores.argmax(axis=1)


def accuracy(y_pred, y) -> float:
    """Fraction of argmax predictions equal to the class index ``y``."""
    return float(accuracy_score(*_labels(y_pred, y)))


def balanced_accuracy(y_pred, y) -> float:
    """Mean per-class recall."""
    return float(balanced_accuracy_score(*_labels(y_pred, y)))


def macro_f1(y_pred, y) -> float:
    """Unweighted mean of the per-class F1 scores over the classes present in truth or prediction."""
    return float(f1_score(*_labels(y_pred, y), average="macro", zero_division=0))


def quadratic_kappa(y_pred, y) -> float:
    """Cohen's kappa with quadratic weights, for ordinal grades (APTOS, RetinaMNIST)."""
    truth, pred = _labels(y_pred, y)
    if len(set(truth) | set(pred)) < 2:
        return 0.0  # kappa is undefined when both raters use a single grade
    return float(cohen_kappa_score(truth, pred, weights="quadratic"))


def macro_auc(y_pred, y) -> float:
    """Macro one-vs-rest ROC AUC over the classes present in ``y`` (the positive-class AUC for 2 classes).

    Equal to scikit-learn's ``roc_auc_score(multi_class="ovr", average="macro")`` when every class is
    present; NaN when fewer than two classes are.
    """
    scores, truth = _numpy(y_pred, y)
    present = np.unique(truth)
    if len(present) < 2:
        return math.nan
    if scores.shape[1] == 2:
        return float(roc_auc_score(truth, scores[:, 1]))
    return float(np.mean([roc_auc_score(truth == c, scores[:, c]) for c in present]))


def tied_pair_fraction(y_pred, y) -> float:
    """The share of (positive, negative) image pairs whose scores tie, averaged like :func:`macro_auc`: a tied
    pair counts half in an AUC, so many ties blunt a ranking (the clipped denoised probabilities of a
    confident denoiser are exact zeros and ones)."""
    scores, truth = _numpy(y_pred, y)
    present = np.unique(truth)
    if len(present) < 2:
        return math.nan
    classes = [1] if scores.shape[1] == 2 else present
    shares = []
    for c in classes:
        positive, negative = scores[truth == c, c], scores[truth != c, c]
        shares.append(float((positive[:, None] == negative[None, :]).mean()))
    return float(np.mean(shares))


def ranking_report(y_pred, y) -> dict:
    """How well one score ranks the images: ``auc`` (:func:`macro_auc`) and ``tied_pairs``
    (:func:`tied_pair_fraction`), JSON-ready."""
    return {"auc": _finite(macro_auc(y_pred, y)), "tied_pairs": _finite(tied_pair_fraction(y_pred, y))}


def calibration_bins(y_pred, y, num_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label reliability: per equal-width confidence bin (0, 1/n], ..., the count, mean confidence and accuracy."""
    scores, truth = _numpy(y_pred, y)
    confidence, correct = scores.max(axis=1), scores.argmax(axis=1) == truth
    index = np.clip(np.ceil(confidence * num_bins).astype(int) - 1, 0, num_bins - 1)
    count = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=num_bins) / count
        bin_accuracy = np.bincount(index, weights=correct, minlength=num_bins) / count
    return {"count": count, "confidence": mean_confidence, "accuracy": bin_accuracy}


def expected_calibration_error(y_pred, y, num_bins: int = 15) -> float:
    """Top-label ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    bins = calibration_bins(y_pred, y, num_bins)
    used = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float(np.sum(gaps * bins["count"][used]) / bins["count"].sum())


METRICS = {
    "accuracy": accuracy,
    "balanced_accuracy": balanced_accuracy,
    "macro_f1": macro_f1,
    "kappa": quadratic_kappa,
    "auc": macro_auc,
}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def classification_report(y_pred, y, class_names: Sequence[str], num_bins: int = 15, ordinal: bool = True) -> dict:
    """Every classification metric of one set of scores over the whole split, JSON-ready (None = undefined).

    Args:
        ordinal: the classes are ordered grades; quadratic weighted kappa is reported only then (it weighs
            an error by the distance between the class indices, which means nothing for nominal classes).

    Returns:
        ``accuracy``, ``macro_f1``, ``balanced_accuracy``, ``auc`` (macro one-vs-rest), ``kappa``
        (quadratic weighted; ordinal classes only), ``ece``, ``per_class`` ({name: precision, recall, f1, support}) and
        ``confusion_matrix`` (rows: true class, columns: predicted class).
    """
    truth, pred = _labels(y_pred, y)
    classes = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(truth, pred, labels=classes, zero_division=0)
    precision, recall, f1 = precision.tolist(), recall.tolist(), f1.tolist()
    report = {name: _finite(fn(y_pred, y)) for name, fn in METRICS.items() if ordinal or name != "kappa"}
    report["ece"] = _finite(expected_calibration_error(y_pred, y, num_bins))
    report["per_class"] = {
        name: {"precision": precision[c], "recall": recall[c], "f1": f1[c], "support": int(support[c])}
        for c, name in enumerate(class_names)
    }
    report["confusion_matrix"] = confusion_matrix(truth, pred, labels=classes).tolist()
    return report


def uncertainty_report(y_pred, y, uncertainty, coverages: Sequence[float] = (0.5, 0.8, 0.9)) -> dict:
    """How well a per-image uncertainty (higher = less sure) separates right from wrong predictions.

    Returns:
        ``error_auroc``: ROC AUC of the uncertainty as a detector of wrong predictions (None when all
        predictions are right or all wrong); ``accuracy_at_coverage``: {coverage: accuracy on the
        ``ceil(coverage * N)`` most certain images}; ``mean``: the mean uncertainty.
    """
    truth, pred = _labels(y_pred, y)
    u = np.asarray(uncertainty.detach().cpu() if isinstance(uncertainty, torch.Tensor) else uncertainty, float)
    wrong = pred != truth
    error_auroc = float(roc_auc_score(wrong, u)) if 0 < wrong.sum() < len(wrong) else None
    order = np.argsort(u, kind="stable")
    at_coverage = {}
    for coverage in coverages:
        kept = order[: max(1, math.ceil(coverage * len(u)))]
        at_coverage[f"{coverage:g}"] = float(1.0 - wrong[kept].mean())
    return {"error_auroc": error_auroc, "accuracy_at_coverage": at_coverage, "mean": float(u.mean())}


class SplitMetric(EpochMetric):
    """ignite's :class:`~ignite.metrics.EpochMetric` gathering a different number of images from each process
    (a validation split shared out without padding, so that no image counts twice); every process computes
    the same value from all images."""

    def compute(self) -> float:
        if not self._predictions or not self._targets:
            raise NotComputableError(f"{type(self).__name__} must have at least one example before it can be computed.")
        if self._result is None:
            predictions = gather_rows(torch.cat(self._predictions, dim=0))
            self._result = self.compute_fn(predictions, gather_rows(torch.cat(self._targets, dim=0)))
        return self._result


def split_metric(name: str, source: str = "pred") -> SplitMetric:
    """An ignite metric over the whole split of engine outputs ``source`` (``pred`` or ``prior``) and ``label``.

    Args:
        name: one of ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``kappa`` (quadratic weighted),
            ``auc`` (macro one-vs-rest).
        source: the output key holding (N, C) class probabilities.
    """
    return SplitMetric(METRICS[name], from_engine([source, "label"]), check_compute_fn=False)


def majority_baseline(labels: Sequence[int], num_classes: int) -> dict[str, float | None]:
    """The argmax metrics of always predicting the most frequent class of ``labels`` (AUC 0.5 by definition)."""
    y = torch.as_tensor(labels).long()
    scores = torch.zeros(len(y), num_classes)
    scores[:, int(np.bincount(y.numpy(), minlength=num_classes).argmax())] = 1.0
    return {name: _finite(fn(scores, y)) for name, fn in METRICS.items() if name != "auc"}
