"""Result folders of evaluation, t-SNE and inference: earlier results are never replaced silently, and every
run says where it wrote."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from .options import as_bool

__all__ = ["EVALUATION", "INFERENCE", "TSNE", "keep_earlier_results", "report_written"]

logger = logging.getLogger(__name__)

# what each run writes into its output_dir
EVALUATION = ("metrics.json", "predictions.csv", "confusion_matrix.png", "calibration.png", "roc.png", "saliency")
INFERENCE = ("predictions.csv", "skipped.csv", "saliency")
TSNE = ("tsne.png",)


def keep_earlier_results(output_dir: str, names: Sequence[str], overwrite: bool | str = False) -> str:
    """Refuses, before any work, an ``output_dir`` that holds results of an earlier run among ``names`` (files or
    folders), unless ``overwrite`` is true. The first step of a run after its checkpoint check.

    Returns:
        ``output_dir``.
    """
    found = [name for name in names if os.path.exists(os.path.join(output_dir, name))]
    if not found:
        return output_dir
    listed = ", ".join(
        f"{name} ({time.strftime('%Y-%m-%d %H:%M', time.localtime(os.path.getmtime(os.path.join(output_dir, name))))})"
        for name in found
    )
    if as_bool(overwrite):
        logger.warning(f"--overwrite true: replacing the earlier results in {output_dir}: {listed}")
        return output_dir
    raise FileExistsError(
        f"output_dir {os.path.abspath(output_dir)} holds the results of an earlier run: {listed}. Nothing was run. "
        "Write elsewhere with --output_dir DIR, or replace them with --overwrite true"
    )


def report_written(output_dir: str, names: Sequence[str]) -> None:
    """Logs the result files a run wrote (``names``), with the folder's absolute path."""
    logger.info(f"Results written to {os.path.abspath(output_dir)}: {', '.join(names)}")
