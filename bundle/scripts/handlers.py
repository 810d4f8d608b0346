"""Ignite handlers that write an evaluation's or inference's results: tables, metrics, figures."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import decollate_batch

from .figures import calibration_figure, confusion_figure, roc_figure, saliency_figure, save_figure
from .metrics import calibration_bins, classification_report, ranking_report, uncertainty_report
from .results import EVALUATION, report_written
from .roi import normalized_saliency

__all__ = ["PredictionReport", "SaliencyWriter", "summary_line", "write_atomic"]

logger = logging.getLogger(__name__)

PRIORS = {"fused": "", "global": "_global", "local": "_local"}  # prior name: suffix of its engine output key
PROBABILITY_RULE = (
    "per sample: clip the denoised label vector at 0 and divide by its sum (one-hot of its argmax when no entry "
    "is positive); per image: the mean over samples; prediction: argmax of the mean"
)
# The denoised AUC ranks by the samples' unclipped mean label vector: the clipped probabilities of a confident
# denoiser are exact zeros and ones and tie (chosen on the validation split, docs/benchmarks.md, study 4).
AUC_SCORE = "label_mean"


SUMMARY = (("accuracy", "ACC"), ("auc", "AUC"), ("macro_f1", "macro-F1"), ("kappa", "kappa"), ("ece", "ECE"))


def write_atomic(path: str, text: str) -> None:
    """Writes ``text`` through a temporary file and a rename: an interrupted write leaves the old file intact,
    and a failed one (a full disk, a read-only folder) leaves no temporary file and names ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = f"{path}.{os.getpid()}.partial"  # two processes writing one folder never share it
    try:
        with open(partial, "w", newline="") as f:
            f.write(text)
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.remove(partial)
        raise OSError(
            f"could not write {path}: {error.strerror or error}; free space or choose another --output_dir"
        ) from error


def _images(output: dict | list) -> list[dict]:
    """The engine output as one dict per image, whether or not the engine decollated it."""
    return decollate_batch(output, detach=True) if isinstance(output, dict) else list(output)


def _as_float(value) -> float:
    return float(value.item() if isinstance(value, torch.Tensor) else value)


class PredictionReport:
    """Collects an evaluator's per-image outputs and, when it completes, writes to ``output_dir``:

    - ``predictions.csv``: one row per image: ``id``, ``true_label`` (when labels exist),
      ``predicted_label``, ``prob_<class>`` per class, ``entropy`` (nats), ``vote_label`` and
      ``vote_agreement`` of the samples, ``prior_label`` and ``prior_prob_<class>`` (the DCG's fused
      prior alone: the ranking, the second view and the uncertainty baseline the benchmarks compare with),
      ``label_mean_<class>`` (the samples' unclipped mean label vector: a ranking score without ties);
    - with labels: ``metrics.json`` (the denoised prediction's metrics, its ``auc`` by ``AUC_SCORE``; the same
      for each prior in ``priors``, uncertainty metrics, and ``info``), ``confusion_matrix.png``,
      ``calibration.png`` and ``roc.png`` (the denoised prediction's ROC curves beside the fused prior's).

    Every file is written atomically. Metrics are computed once over the whole split.

    Args:
        output_dir: where the files go.
        class_names: class names in index order.
        info: entries written beside the metrics (checkpoint, sampler, seed, split, ...).
        coverages: fractions of most certain images at which accuracy is reported.
        num_bins: confidence bins of the ECE and the reliability diagram.
        priors: the priors the network computes (``scripts.variants.VARIANTS``): only those get a metrics block.
        ordinal: the classes are ordered grades: quadratic kappa is reported only then.
    """

    def __init__(
        self,
        output_dir: str,
        class_names: Sequence[str],
        info: dict | None = None,
        coverages: Sequence[float] = (0.5, 0.8, 0.9),
        num_bins: int = 15,
        priors: Sequence[str] = tuple(PRIORS),
        ordinal: bool = True,
    ) -> None:
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.info = dict(info or {})
        self.priors = tuple(priors)
        self.ordinal = bool(ordinal)
        self.coverages = tuple(coverages)
        self.num_bins = num_bins
        self.records: list[dict] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def reset(self, engine: Engine | None = None) -> None:
        self.records = []

    def collect(self, engine: Engine) -> None:
        for item in _images(engine.state.output):
            if "id" not in item:
                raise KeyError("engine output without 'id': every datalist item needs an identifier")
            record = {"id": str(item["id"]), "probs": torch.as_tensor(item["pred"]).double().cpu()}
            record["prior"] = {k: torch.as_tensor(item[f"prior{s}"]).double().cpu() for k, s in PRIORS.items()}
            record.update({k: _as_float(item[k]) for k in ("entropy", "agreement") if k in item})
            record["samples"] = int(torch.as_tensor(item["denoised"]).shape[0]) if "denoised" in item else 1
            if "label_mean" in item:  # unclipped; an output without samples ranks by its probabilities
                record["label_mean"] = torch.as_tensor(item["label_mean"]).double().cpu()
            elif "denoised" in item:
                record["label_mean"] = torch.as_tensor(item["denoised"]).double().cpu().mean(0)
            else:
                record["label_mean"] = record["probs"]
            record["vote"] = int(item["vote"]) if "vote" in item else int(record["probs"].argmax())
            if item.get("label") is not None:
                record["label"] = int(_as_float(item["label"]))
            self.records.append(record)

    def table(self) -> list[dict]:
        """The rows of predictions.csv."""
        rows = []
        for r in self.records:
            row = {"id": r["id"]}
            if "label" in r:
                row["true_label"] = self.class_names[r["label"]]
            row["predicted_label"] = self.class_names[int(r["probs"].argmax())]
            probs = zip(self.class_names, r["probs"].tolist(), strict=True)
            row.update({f"prob_{name}": f"{p:.6f}" for name, p in probs})
            row["entropy"] = f"{r.get('entropy', float('nan')):.6f}"
            row["vote_label"] = self.class_names[r["vote"]]
            row["vote_agreement"] = f"{r.get('agreement', 1.0):.4f}"
            row["prior_label"] = self.class_names[int(r["prior"]["fused"].argmax())]
            prior = zip(self.class_names, r["prior"]["fused"].tolist(), strict=True)
            row.update({f"prior_prob_{name}": f"{p:.6f}" for name, p in prior})
            label_mean = zip(self.class_names, r["label_mean"].tolist(), strict=True)
            row.update({f"label_mean_{name}": f"{v:.6f}" for name, v in label_mean})
            rows.append(row)
        return rows

    def labels_and_scores(self, prior: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The true labels (N,) and the denoised probabilities, or those of ``prior``, (N, C) of every image."""
        labels = torch.tensor([r["label"] for r in self.records])
        scores = torch.stack([r["prior"][prior] if prior else r["probs"] for r in self.records])
        return labels, scores

    def label_means(self) -> torch.Tensor:
        """The samples' unclipped mean label vectors (N, C): ``AUC_SCORE``, what the denoised AUC and ROC curves
        rank by."""
        return torch.stack([r["label_mean"] for r in self.records])

    def rankings(self, labels: torch.Tensor, probs: torch.Tensor) -> dict:
        """AUC and tied pairs of three scores of the denoised prediction (which one ranks best is chosen on
        the validation split, docs/benchmarks.md): the clipped, renormalised probabilities; the unclipped
        mean label vector of the samples; the probabilities with ties broken by the fused prior."""
        candidates = {"probabilities": probs, "label_mean": self.label_means()}
        if "fused" in self.priors:
            candidates["probabilities_then_prior"] = probs + 1e-9 * self.labels_and_scores("fused")[1]
        return {name: ranking_report(scores, labels) for name, scores in candidates.items()}

    def metrics(self) -> dict:
        """metrics.json's content (labels needed)."""
        labels, probs = self.labels_and_scores()
        entropy = torch.tensor([r.get("entropy", float("nan")) for r in self.records])
        disagreement = 1.0 - torch.tensor([r.get("agreement", 1.0) for r in self.records])
        votes = torch.tensor([r["vote"] for r in self.records])
        denoised = classification_report(probs, labels, self.class_names, self.num_bins, self.ordinal)
        denoised["vote_accuracy"] = float((votes == labels).double().mean())
        several = max(r["samples"] for r in self.records) > 1  # one sample cannot disagree with itself
        denoised["uncertainty"] = {
            "entropy": uncertainty_report(probs, labels, entropy, self.coverages),
            "disagreement": uncertainty_report(probs, labels, disagreement, self.coverages) if several else None,
        }
        denoised["ranking"] = self.rankings(labels, probs)
        denoised["auc"] = denoised["ranking"][AUC_SCORE]["auc"]
        denoised["auc_score"] = AUC_SCORE
        prior = {}
        for name in self.priors:
            scores = self.labels_and_scores(name)[1]
            prior[name] = classification_report(scores, labels, self.class_names, self.num_bins, self.ordinal)
            prior_entropy = torch.special.entr(scores).sum(1)
            prior[name]["uncertainty"] = {"entropy": uncertainty_report(scores, labels, prior_entropy, self.coverages)}
        return {
            "num_images": len(self.records),
            "denoised": denoised,
            "prior": prior,
            "probability_rule": PROBABILITY_RULE,
            **self.info,
        }

    def write(self, engine: Engine | None = None) -> None:
        if not self.records:
            raise ValueError(f"no images were evaluated; nothing written to {self.output_dir}")
        write_atomic(os.path.join(self.output_dir, "predictions.csv"), _csv_text(self.table()))
        if not all("label" in r for r in self.records):
            report_written(self.output_dir, ["predictions.csv"])
            return
        report = self.metrics()
        logger.info(summary_line(report, self.info.get("split")))
        write_atomic(os.path.join(self.output_dir, "metrics.json"), json.dumps(report, indent=2) + "\n")
        labels, probs = self.labels_and_scores()
        title = f"{self.info.get('split', '')} split, denoised prediction".strip()
        save_figure(
            confusion_figure(report["denoised"]["confusion_matrix"], self.class_names, title),
            os.path.join(self.output_dir, "confusion_matrix.png"),
        )
        curves = {"denoised": (calibration_bins(probs, labels, self.num_bins), report["denoised"]["ece"])}
        ranked = {"denoised": self.label_means()}
        if "fused" in report["prior"]:
            fused = self.labels_and_scores("fused")[1]
            curves["DCG prior"] = (calibration_bins(fused, labels, self.num_bins), report["prior"]["fused"]["ece"])
            ranked["DCG prior"] = fused
        save_figure(calibration_figure(curves), os.path.join(self.output_dir, "calibration.png"))
        split = f"{self.info['split']} split" if self.info.get("split") else ""
        save_figure(roc_figure(ranked, labels, self.class_names, split), os.path.join(self.output_dir, "roc.png"))
        report_written(self.output_dir, [name for name in EVALUATION if name != "saliency"])  # SaliencyWriter's


def summary_line(report: dict, split: str | None = None) -> str:
    """One line of a metrics report: the denoised prediction's main metrics, then the fused prior's."""

    def scores(block: dict) -> str:
        return ", ".join(f"{name} {block[key]:.3f}" for key, name in SUMMARY if block.get(key) is not None)

    where = f"{split} split, " if split else ""
    line = f"{where}{report['num_images']} images: denoised {scores(report['denoised'])}"
    fused = report.get("prior", {}).get("fused")
    return f"{line}; DCG prior {scores(fused)}" if fused else line


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


class SaliencyWriter:
    """Writes, per image, ``<output_dir>/<id>.png``: the DCG saliency overlaid on the image, the ROI windows
    that fed the local prior, and the predicted class with its probability in the title.

    The overlay is the map the ROIs were selected from (per-class min-max normalised class maps, summed,
    at image resolution).

    Args:
        output_dir: the folder of the PNGs.
        class_names: class names in index order.
        roi_size: side of the ROI windows in pixels.
    """

    def __init__(self, output_dir: str, class_names: Sequence[str], roi_size: int) -> None:
        self.output_dir = output_dir
        self.class_names = list(class_names)
        self.roi_size = roi_size
        self.written = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self.report)

    def reset(self, engine: Engine | None = None) -> None:
        self.written = 0

    def report(self, engine: Engine | None = None) -> None:
        report_written(self.output_dir, [f"{self.written} saliency figures (<id>.png)"])

    def __call__(self, engine: Engine) -> None:
        for item in _images(engine.state.output):
            image = torch.as_tensor(item["image"]).detach().float().cpu()
            heat = normalized_saliency(torch.as_tensor(item["saliency"]).float().cpu()[None], image.shape[1:])[0]
            probs = torch.as_tensor(item["pred"])
            c = int(probs.argmax())
            title = f"{item['id']}: {self.class_names[c]} ({float(probs[c]):.2f})"
            figure = saliency_figure(image.numpy(), heat.numpy(), np.asarray(item["rois"]), self.roi_size, title)
            name = str(item["id"]).replace("/", "__").replace(os.sep, "__")
            save_figure(figure, os.path.join(self.output_dir, f"{name}.png"))
            self.written += 1
