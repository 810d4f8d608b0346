"""Whole-split metrics against scikit-learn, calibration and uncertainty metrics, and the report handler."""

import csv
import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from scripts.handlers import PredictionReport, summary_line
from scripts.metrics import (
    calibration_bins,
    classification_report,
    expected_calibration_error,
    macro_auc,
    tied_pair_fraction,
    uncertainty_report,
)
from scripts.variants import variant

CLASSES = ["a", "b", "c", "d"]


def fixed_scores(n=60, c=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 1.5 * np.eye(c)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return torch.tensor(probs), torch.tensor(labels)


def test_every_metric_equals_scikit_learn():
    probs, labels = fixed_scores()
    y, p = labels.numpy(), probs.numpy()
    pred = p.argmax(1)
    report = classification_report(probs, labels, CLASSES)
    assert report["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert report["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert report["kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    assert report["auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    precision, recall, f1, support = precision_recall_fscore_support(y, pred, labels=range(4), zero_division=0)
    for c, name in enumerate(CLASSES):
        got = report["per_class"][name]
        assert (got["precision"], got["recall"], got["f1"], got["support"]) == pytest.approx(
            (precision[c], recall[c], f1[c], support[c])
        )
    assert np.array(report["confusion_matrix"]).sum() == 60
    assert np.trace(np.array(report["confusion_matrix"])) == (pred == y).sum()
    binary = torch.tensor([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    assert macro_auc(binary, torch.tensor([0, 1, 1, 1])) == pytest.approx(roc_auc_score([0, 1, 1, 1], binary[:, 1]))
    assert math.isnan(macro_auc(binary, torch.tensor([1, 1, 1, 1])))  # one class: undefined


def test_expected_calibration_error_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.55 (right): bins (0.8667, 0.9333] and (0.5333, 0.6]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    expected = (2 * abs(0.5 - 0.9) + 2 * abs(1.0 - 0.575)) / 4
    assert expected_calibration_error(probs, labels, num_bins=15) == pytest.approx(expected)
    bins = calibration_bins(probs, labels, num_bins=15)
    assert bins["count"].sum() == 4 and bins["count"][13] == 2


def test_uncertainty_report_on_a_planted_case():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.4, 0.6], [0.7, 0.3]])
    labels = torch.tensor([0, 0, 1, 1, 1])  # wrong: images 2 and 4
    uncertainty = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.8])  # the two errors are the most uncertain
    report = uncertainty_report(probs, labels, uncertainty, coverages=(0.5, 0.8))
    assert report["error_auroc"] == 1.0
    assert report["accuracy_at_coverage"] == {"0.5": 1.0, "0.8": 0.75}  # 3 and 4 most certain images
    assert uncertainty_report(probs, torch.tensor([0, 0, 0, 1, 0]), uncertainty)["error_auroc"] is None


def test_ranking_scores_of_the_denoised_prediction_on_a_planted_case(tmp_path):
    """Clipped probabilities of exact zeros and ones tie; the unclipped label mean and the prior break the ties."""
    labels = torch.tensor([1, 1, 0, 0])
    probs = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # 2 of the 4 (pos, neg) pairs tie
    assert tied_pair_fraction(probs, labels) == 0.5 and macro_auc(probs, labels) == 0.5
    samples = torch.tensor([[-0.2, 1.2], [0.9, 0.3], [-0.1, 1.1], [1.3, -0.4]])  # one sample each: clips to probs
    prior = torch.tensor([[0.3, 0.7], [0.4, 0.6], [0.45, 0.55], [0.8, 0.2]])
    batch = {"id": list("abcd"), "pred": probs, "label": labels, "denoised": samples.unsqueeze(1)}
    batch |= {"prior": prior, "prior_global": prior, "prior_local": prior, "vote": probs.argmax(1)}
    batch |= {"entropy": torch.zeros(4), "agreement": torch.ones(4)}
    report_engine([batch], PredictionReport(str(tmp_path), ["x", "y"]))
    ranking = json.loads((tmp_path / "metrics.json").read_text())["denoised"]["ranking"]
    assert ranking["probabilities"] == {"auc": 0.5, "tied_pairs": 0.5}
    # label mean, class y: positives 1.2, 0.3 against negatives 1.1, -0.4: 3 of 4 pairs right, none tied
    assert ranking["label_mean"] == {"auc": 0.75, "tied_pairs": 0.0}
    # ties broken by the prior's y: (1.0 + 0.7e-9 > 1.0 + 0.55e-9) right, (0 + 0.6e-9 > 0 + 0.2e-9) right
    assert ranking["probabilities_then_prior"] == {"auc": 0.75, "tied_pairs": 0.0}


def test_the_denoised_auc_and_roc_curves_rank_by_the_label_mean(tmp_path):
    """metrics.json's denoised auc is the tie-free label mean's (study 4), from the engine's label_mean output,
    and roc.png is written; the clipped probabilities' auc stays in the ranking block."""
    labels = torch.tensor([1, 1, 0, 0])
    probs = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    label_mean = torch.tensor([[-0.2, 1.2], [0.9, 0.3], [-0.1, 1.1], [1.3, -0.4]])
    prior = torch.tensor([[0.3, 0.7], [0.4, 0.6], [0.45, 0.55], [0.8, 0.2]])
    batch = {"id": list("abcd"), "pred": probs, "label": labels, "label_mean": label_mean, "vote": probs.argmax(1)}
    batch |= {"prior": prior, "prior_global": prior, "prior_local": prior, "entropy": torch.zeros(4)}
    report_engine([batch], PredictionReport(str(tmp_path), ["x", "y"]))
    denoised = json.loads((tmp_path / "metrics.json").read_text())["denoised"]
    assert denoised["auc_score"] == "label_mean"
    assert denoised["auc"] == 0.75 and denoised["ranking"]["probabilities"]["auc"] == 0.5
    assert (tmp_path / "roc.png").stat().st_size > 1000


def report_engine(batches: list[dict], handler: PredictionReport) -> Engine:
    engine = Engine(lambda e, batch: batch)
    handler.attach(engine)
    engine.run(batches, max_epochs=1)
    return engine


def test_kappa_over_the_whole_split_is_written_not_the_per_batch_mean(tmp_path):
    """Two batches whose per-batch kappas average to something else than the whole split's kappa."""
    truth = [0, 1, 2, 3, 4, 0, 0, 1, 1, 0]
    pred = [0, 1, 2, 4, 4, 1, 0, 1, 0, 0]
    eye = torch.eye(5)
    batches = [
        {
            "id": [f"im{i}" for i in range(s, s + 5)],
            "pred": eye[pred[s : s + 5]],
            "label": torch.tensor(truth[s : s + 5]),
            **{k: eye[pred[s : s + 5]] for k in ("prior", "prior_global", "prior_local")},
            "entropy": torch.zeros(5),
            "agreement": torch.ones(5),
            "vote": torch.tensor(pred[s : s + 5]),
        }
        for s in (0, 5)
    ]
    names = ["g0", "g1", "g2", "g3", "g4"]
    report_engine(batches, PredictionReport(str(tmp_path), names, info={"split": "test"}))
    written = json.loads((tmp_path / "metrics.json").read_text())
    whole = cohen_kappa_score(truth, pred, weights="quadratic")
    per_batch = np.mean([cohen_kappa_score(truth[s : s + 5], pred[s : s + 5], weights="quadratic") for s in (0, 5)])
    assert abs(whole - per_batch) > 0.05
    assert written["denoised"]["kappa"] == pytest.approx(whole)
    assert written["split"] == "test" and written["num_images"] == 10
    with open(tmp_path / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == [f"im{i}" for i in range(10)]
    assert [r["predicted_label"] for r in rows] == [names[p] for p in pred]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0 and (tmp_path / "calibration.png").exists()


VARIANT_PRIORS = [("basic", set()), ("C1", {"fused"}), ("full", {"fused", "global", "local"})]


@pytest.mark.parametrize("name, blocks", VARIANT_PRIORS)
def test_metrics_report_only_the_priors_a_variant_computes(tmp_path, name, blocks):
    eye = torch.eye(2)
    batch = {
        "id": ["a", "b", "c", "d"],
        "pred": eye[[0, 1, 1, 0]],
        "label": torch.tensor([0, 1, 0, 0]),
        **{k: eye[[0, 1, 1, 1]] for k in ("prior", "prior_global", "prior_local")},
        "entropy": torch.tensor([0.1, 0.2, 0.3, 0.4]),
        "agreement": torch.ones(4),
        "vote": torch.tensor([0, 1, 1, 0]),
    }
    report_engine([batch], PredictionReport(str(tmp_path), ["x", "y"], priors=variant(name).priors))
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert set(written["prior"]) == blocks
    assert (tmp_path / "calibration.png").exists()
    assert ("DCG prior ACC" in summary_line(written)) == bool(blocks)


def test_kappa_is_reported_for_ordinal_grades_only():
    probs, labels = torch.eye(3)[[0, 1, 2, 1]], torch.tensor([0, 1, 1, 1])
    assert "kappa" in classification_report(probs, labels, ["g0", "g1", "g2"], ordinal=True)
    assert "kappa" not in classification_report(probs, labels, ["cat", "dog", "owl"], ordinal=False)
