"""Figures of the evaluation: confusion matrices, reliability diagram, ROC curves, saliency overlays, t-SNE panels.

Built with matplotlib's object-oriented API (no pyplot state), so they draw in any thread or process
without a display; :func:`save_figure` writes them atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import roc_auc_score, roc_curve

__all__ = ["confusion_figure", "calibration_figure", "roc_figure", "saliency_figure", "tsne_figure", "save_figure"]


def save_figure(figure: Figure, path: str, dpi: int = 120) -> None:
    """Writes a PNG through a temporary file and a rename, so a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.partial"
    figure.savefig(partial, format="png", dpi=dpi, bbox_inches="tight")
    os.replace(partial, path)


def confusion_figure(matrix: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "") -> Figure:
    """Confusion matrix as counts (left) and normalised by true class (right)."""
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(4.0, 0.6 * len(class_names) + 2.5)
    figure = Figure(figsize=(2 * size + 1, size), layout="constrained")
    for ax, values, label, fmt, top in zip(
        figure.subplots(1, 2),
        (counts, normalised),
        ("count", "fraction of true class"),
        ("{:.0f}", "{:.2f}"),
        (None, 1.0),
        strict=True,
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        figure.colorbar(image, ax=ax, fraction=0.046, label=label)
        ticks = range(len(class_names))
        ax.set_xticks(ticks, class_names, rotation=45, ha="right")
        ax.set_yticks(ticks, class_names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        threshold = (top or values.max()) / 2
        for (r, c), v in np.ndenumerate(values):
            ax.text(c, r, fmt.format(v), ha="center", va="center", color="white" if v > threshold else "black")
    if title:
        figure.suptitle(title)
    return figure


def calibration_figure(curves: dict[str, tuple[dict, float]], title: str = "") -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, one curve per score set.

    Args:
        curves: {label: (bins from :func:`scripts.metrics.calibration_bins`, ECE)}.
    """
    figure = Figure(figsize=(5, 5))
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    for label, (bins, ece) in curves.items():
        used = bins["count"] > 0
        ax.plot(bins["confidence"][used], bins["accuracy"][used], marker="o", label=f"{label} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left")
    ax.set_title(title or "reliability diagram")
    return figure


def roc_figure(
    scores: dict[str, np.ndarray], labels: np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """ROC curves, one curve per score set, with its AUC: one panel for two classes (the second class is the
    positive one, as in :func:`scripts.metrics.macro_auc`), one panel per class (one against the rest) otherwise,
    at most 4 panels a row.

    Args:
        scores: {label: (N, C) ranking scores}, e.g. the denoised prediction's and the fused prior's.
        labels: the true class indices (N,).
    """
    truth = np.asarray(labels)
    classes = [1] if len(class_names) == 2 else list(range(len(class_names)))
    columns = min(4, len(classes))
    rows = -(-len(classes) // columns)
    figure = Figure(figsize=(3.6 * columns, 3.8 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    for ax in axes[len(classes) :]:
        ax.set_axis_off()
    for ax, c in zip(axes, classes, strict=False):
        positive = truth == c
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--")
        if 0 < positive.sum() < len(truth):  # a curve needs positives and negatives
            for label, values in scores.items():
                score = np.asarray(values, dtype=float)[:, c]
                fpr, tpr, _ = roc_curve(positive, score)
                ax.plot(fpr, tpr, label=f"{label} (AUC {roc_auc_score(positive, score):.3f})")
            ax.legend(loc="lower right", fontsize=8)
        else:
            ax.text(0.5, 0.5, "undefined: no image or every image\nis of this class", ha="center", va="center")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title(
            f"positive class: {class_names[c]}" if len(classes) == 1 else f"{class_names[c]} against the rest",
            fontsize=9,
        )
    figure.suptitle(f"{title}, ROC curves" if title else "ROC curves")
    return figure


def saliency_figure(image: np.ndarray, heat: np.ndarray, rois: np.ndarray, roi_size: int, title: str = "") -> Figure:
    """The image, its DCG saliency overlaid, and the ROI windows that fed the local prior.

    Args:
        image: channel-first image (C, H, W), any intensity range.
        heat: saliency map at image resolution (H, W) (the map the ROIs were selected from).
        rois: top-left corners (row, column) of the K windows, shape (K, 2).
        roi_size: side of a window in pixels.
        title: e.g. the predicted class and its probability.
    """
    low, high = float(image.min()), float(image.max())
    shown = (image - low) / (high - low) if high > low else np.zeros_like(image, dtype=float)
    shown = shown[0] if shown.shape[0] == 1 else np.moveaxis(shown[:3], 0, -1)
    figure = Figure(figsize=(4, 4))
    ax = figure.subplots()
    ax.imshow(shown, cmap="gray" if shown.ndim == 2 else None)
    ax.imshow(heat, cmap="jet", alpha=0.4)
    for k, (row, col) in enumerate(np.asarray(rois).reshape(-1, 2)):
        box = Rectangle((col - 0.5, row - 0.5), roi_size, roi_size, fill=False, edgecolor="white", linewidth=1.5)
        ax.add_patch(box)
        ax.text(col, row, str(k + 1), color="white", fontsize=8, va="top")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return figure


def tsne_figure(
    embeddings: Sequence[np.ndarray], labels: np.ndarray, class_names: Sequence[str], titles: Sequence[str]
) -> Figure:
    """One t-SNE scatter panel per embedding set, coloured by true class (the paper's Figure 2)."""
    figure = Figure(figsize=(3.2 * len(embeddings), 3.4))
    axes = np.atleast_1d(figure.subplots(1, len(embeddings)))
    colours = [f"C{c % 10}" for c in range(len(class_names))]
    for ax, points, title in zip(axes, embeddings, titles, strict=True):
        for c, name in enumerate(class_names):
            mask = labels == c
            ax.scatter(points[mask, 0], points[mask, 1], s=6, color=colours[c], label=name)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2)
    return figure
