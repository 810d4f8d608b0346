"""Rebuilds the tables and figures of the results pages from the CSVs in benchmarks/results/.

``MAP`` below says, for each section of each page (``bundle/docs/benchmarks.md``, one section per question;
``benchmarks_history.md``, the log of the sessions, whose superseded tables are frozen copies; the bundle's
``README.md``), which tables and figures it holds and which CSVs each is built from. The prose is written by
hand; each table sits between ``<!-- table:NAME -->`` and ``<!-- end -->`` markers under its section's ``## ``
heading and is regenerated here with a provenance line (machine, date, code, command: from the CSVs'
``device``, ``date`` and ``commit`` columns, else from ``SOURCES``), so no number is typed by hand (the
published MedMNIST v2 results and the targets are constants below, with their source).
Running it twice changes nothing:

    python benchmarks/report.py
    python benchmarks/report.py --docs /tmp/docs   # pages read and written there, figures in /tmp/docs/images
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, RESULTS, read_rows, script_parser, write_whole
from common import markdown_table as markdown  # noqa: E402 - beside this script

DOCS = REPO / "bundle" / "docs"
HISTORY = "benchmarks_history.md"
FIXED_PRIOR_SETTINGS = ("y0_dcg5", "y0_dcg10")  # dcg_epochs 5 and 10 of 30 (train_evaluate.py --setting)
LR_SETTINGS = ("y0", "y0_lr3e-4")  # the y0 recipe on the CPU, and with lr_denoiser 0.0003 instead of 0.001
DIFFUSION_STUDY_SETTINGS = ("y0", "y0_repeat", "y0_eval_priors", "y0_weight10")  # issue 16's validation studies
CONFIGS = REPO / "bundle" / "configs"

DATASETS = {"breastmnist": "BreastMNIST", "retinamnist": "RetinaMNIST"}  # the ablation's datasets, in page order
DISPLAY_NAMES = {**DATASETS, "ham10000": "HAM10000", "aptos2019": "APTOS 2019"}
SEEDS = ("0", "1", "2")
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
ALPHA = 0.05  # McNemar tests counted as significant below this p-value; 95 % bootstrap intervals
AUC_TEST = "[95 % CI], p (paired bootstrap of the images)"  # the column of paired_auc_difference
# MedMNIST v2 (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
# classification", Scientific Data 10, 41, 2023), table of benchmark results: test AUC and ACC per method.
PUBLISHED: dict[str, list[tuple[str, float, float]]] = {
    "breastmnist": [
        ("ResNet-18 (28)", 0.901, 0.863),
        ("ResNet-50 (28)", 0.857, 0.812),
        ("auto-sklearn", 0.836, 0.803),
        ("AutoKeras", 0.871, 0.831),
        ("Google AutoML Vision", 0.919, 0.861),
    ],
    "retinamnist": [
        ("ResNet-18 (28)", 0.717, 0.524),
        ("ResNet-50 (28)", 0.726, 0.528),
        ("auto-sklearn", 0.690, 0.515),
        ("AutoKeras", 0.719, 0.503),
        ("Google AutoML Vision", 0.750, 0.531),
    ],
}
TARGETS = {"breastmnist": (0.92, 0.87), "retinamnist": (0.76, 0.55)}  # the project's test (AUC, ACC) targets
# The paper's datasets at CPU scale: (dataset, setting of train_evaluate.py, the setting of its basic, label), in
# page order. The y0 blocks have no basic of their own: the prediction target does not change it.
PAPER_DATASETS = [
    ("ham10000", "default", "default", "HAM10000, authors' 70/30 split"),
    ("ham10000", "y0", "default", "HAM10000, authors' 70/30 split, y0"),
    ("ham10000", "lesion_split", "lesion_split", "HAM10000, lesion-grouped 70/30 split"),
    ("aptos2019", "default", "default", "APTOS 2019, authors' 70/30 split"),
    ("aptos2019", "y0", "default", "APTOS 2019, authors' 70/30 split, y0"),
]
# DiffMIC (Yang et al., MICCAI 2023) as published: test ACC and macro-F1 at 224 px on the authors' split
PAPER_ROWS = {"ham10000": (0.906, 0.816), "aptos2019": (0.858, 0.716)}


class ModelRow(NamedTuple):
    """One model row of a table: which runs, the S of their evaluation (basic and the prior do not depend on it),
    which prediction (``denoised`` or the fused ``prior``), and the runs' setting where the table mixes them."""

    label: str
    variant: str
    samples: str
    prediction: str
    setting: str = "default"

    def samples_cell(self) -> str:
        return "-" if self.prediction == "prior" or self.variant == "basic" else self.samples

    def metrics(self, metrics: Rows, dataset: str, **fields: str) -> Rows:
        """This model's metric rows on a dataset, by seed; ``fields`` narrow them (a split, a seed)."""
        mine = dict(dataset=dataset, setting=self.setting, variant=self.variant, num_samples=self.samples)
        return sorted(select(metrics, **mine, **fields), key=lambda r: int(r["seed"]))

    def evaluation(self, runs: Runs, dataset: str, seed: str = "0") -> Evaluation | None:
        """This model's per-image test results of one seed, None where not collected."""
        return runs.get((dataset, self.setting, self.variant, seed, self.samples, "test"))


ABLATION_ROWS = [
    ModelRow("basic (ResNet-18)", "basic", "10", "denoised"),
    ModelRow("DCG prior (fused, of full)", "full", "10", "prior"),
    ModelRow("C1", "C1", "1", "denoised"),
    ModelRow("C1", "C1", "10", "denoised"),
    ModelRow("C2", "C2", "1", "denoised"),
    ModelRow("C2", "C2", "10", "denoised"),
    ModelRow("full", "full", "1", "denoised"),
    ModelRow("full", "full", "10", "denoised"),
]
# this bundle's rows beside the published ones (test means over seeds)
OWN_ROWS = [
    ModelRow("basic (ResNet-18), small recipe", "basic", "10", "denoised"),
    ModelRow("full, S=10, small recipe with the noise target (before y0)", "full", "10", "denoised"),
    ModelRow("full, S=10, small recipe (y0)", "full", "10", "denoised", "y0"),
]


class Evaluation(NamedTuple):
    """The per-image results of one evaluation, in image-id order."""

    ids: list[str]
    true: np.ndarray  # class indices
    predicted: np.ndarray
    prior: np.ndarray
    probs: np.ndarray  # images x classes, of the denoised prediction
    prior_probs: np.ndarray | None = None  # images x classes, of the fused prior (evaluations since 2026-12-01)
    agreement: np.ndarray | None = None  # the share of samples that voted for the majority label (idem)
    label_mean: np.ndarray | None = None  # images x classes, the samples' unclipped mean label vector (study 4)


EvaluationKey = tuple[str, str, str, str, str, str]  # dataset, setting, variant, seed, num_samples, split
Runs = dict[EvaluationKey, Evaluation]
Rows = list[dict[str, str]]  # of a CSV


def f3(text: str) -> str:
    return f"{float(text):.3f}" if text not in ("", None) else "-"


def rate(row: dict[str, str]) -> str:
    """Images per second: whole numbers from 100 on, three significant digits below (a CPU's 224 px rates)."""
    value = float(row["images_per_s"])
    return f"{value:.0f}" if value >= 100 else f"{value:#.3g}"


def speed_table(rows: Rows) -> str:
    """Images per second and the ratio to ``basic`` of every inference and training measurement."""
    wanted = ["infer_dcg", "infer_full_s1", "infer_full_s10", "train_full"]
    out = []
    settings = sorted({(r["recipe"], int(r["image_size"]), int(r["width"])) for r in rows}, key=lambda s: (s[1], s[2]))
    for recipe, size, width in settings:
        by = {r["measurement"]: r for r in select(rows, recipe=recipe, image_size=str(size), width=str(width))}
        cells = [f"{size}", f"{width} ({recipe})", rate(by["infer_basic"])]
        cells += [f"{rate(by[m])} ({float(by[m]['ratio_to_basic']):.2f}x)" for m in wanted]
        cells += [rate(by["train_basic"])]
        check = by["check_no_wasted_work"]
        cells += [f"{float(check['check_ratio']):.2f} ({'met' if check['check_pass'] == 'True' else 'not met'})"]
        cells += [f"{float(by['train_basic']['peak_mem_mb']):.0f} / {float(by['train_full']['peak_mem_mb']):.0f}"]
        out.append(cells)
    header = ["px", "width", "basic img/s", "DCG prior", "full, S=1", "full, S=10", "full training"]
    header += ["basic training img/s", "no-wasted-work ratio (<= 1.2)", "training peak MiB basic / full"]
    return markdown(header, out)


def evaluation_table(rows: Rows, setting: str = "default") -> str:
    """Test-split metrics of the denoised prediction and of the fused DCG prior, per evaluation of a setting."""
    metrics = ("accuracy", "macro_f1", "auc", "kappa", "ece", "entropy_error_auroc")
    metrics += ("prior_accuracy", "prior_macro_f1", "prior_auc", "prior_kappa")
    out = [
        [r["dataset"], r["recipe"], r["epochs"], r["num_samples"], *(f3(r[k]) for k in metrics), r["train_seconds"]]
        for r in rows
        if r.get("split", "test") == "test" and r.get("setting", "default") == setting  # older files: test only
    ]
    header = ["dataset", "recipe", "epochs", "S", "ACC", "macro-F1", "AUC", "kappa", "ECE", "error AUROC (entropy)"]
    header += ["prior ACC", "prior F1", "prior AUC", "prior kappa", "training s"]
    return markdown(header, out)


def select(rows: Rows, **fields: str) -> Rows:
    """The rows whose columns equal every given value."""
    return [r for r in rows if all(r.get(k) == v for k, v in fields.items())]


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation) of several seeds; the value alone for one; ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def means(rows: Rows, columns: Sequence[str]) -> list[str]:
    """:func:`mean_sd` of each column over the rows (one per seed)."""
    return [mean_sd([float(r[c]) for r in rows]) for c in columns]


def display(dataset: str) -> str:
    return DISPLAY_NAMES.get(dataset, dataset)


def p_cell(p_value: float | None) -> str:
    return "-" if p_value is None else f"{p_value:.3g}"


def evaluations(rows: Rows) -> dict[EvaluationKey, Evaluation]:
    """The rows of a ``collect.py`` predictions CSV as one ``Evaluation`` per (dataset, setting, variant, seed,
    num_samples, split)."""
    grouped: dict[EvaluationKey, Rows] = {}
    for r in rows:
        key = (r["dataset"], r["setting"], r["variant"], r["seed"], r["num_samples"], r["split"])
        grouped.setdefault(key, []).append(r)
    return {key: evaluation(sorted(group, key=lambda r: r["id"])) for key, group in grouped.items()}


def evaluation(rows: Rows) -> Evaluation:
    """One evaluation's rows (labels as class indices, ``prob_0``... blank past the dataset's class count)."""
    classes = [k.removeprefix("prob_") for k in rows[0] if k.startswith("prob_") and rows[0][k] != ""]

    def column(name: str) -> np.ndarray:
        return np.array([float(r[name]) for r in rows])

    def matrix(prefix: str) -> np.ndarray | None:
        """Images x classes of the ``<prefix><class>`` columns; None where the evaluation predates them."""
        return np.array([[float(r[prefix + c]) for c in classes] for r in rows]) if rows[0].get(prefix + "0") else None

    return Evaluation(
        ids=[r["id"] for r in rows],
        true=column("true_label").astype(int),
        predicted=column("predicted_label").astype(int),
        prior=column("prior_label").astype(int),
        probs=matrix("prob_"),
        prior_probs=matrix("prior_prob_"),  # evaluations since 2026-12-01, with the samples' agreement
        agreement=column("vote_agreement") if rows[0].get("prior_prob_0") else None,
        label_mean=matrix("label_mean_"),
    )


def weighted_auc(counts: np.ndarray, positive: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """ROC AUC of each bootstrap resample, as sklearn's ``roc_auc_score`` computes it (a tie counts one half).

    A resample is the original images weighted by how often it drew each, so one sort of the scores serves all
    resamples: the AUC is the weighted share of (positive, negative) pairs the scores order correctly.
    ``counts``: resamples x images, how often each resample drew each image (all ones: the images themselves);
    ``positive``, ``scores``: per image. NaN where a resample has no positive or no negative image.
    """
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    ties = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # where each group of equal scores starts
    weights, is_positive = counts[:, order], positive[order]
    pos = np.add.reduceat(weights * is_positive, ties, axis=1)  # positives drawn per group of equal scores
    neg = np.add.reduceat(weights * ~is_positive, ties, axis=1)
    below = np.cumsum(neg, axis=1) - neg  # negatives with a lower score than the group
    with np.errstate(invalid="ignore", divide="ignore"):
        return (pos * (below + neg / 2)).sum(axis=1) / (pos.sum(axis=1) * neg.sum(axis=1))


def macro_auc(counts: np.ndarray, true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """AUC of each resample: of class 1 for two classes, else the unweighted mean of the one-vs-rest AUCs.

    This is sklearn's ``roc_auc_score(true, probs[:, 1])`` and ``roc_auc_score(true, probs, multi_class="ovr",
    average="macro")``, for many resamples at once (a test checks both against sklearn); ``probs``: images x
    classes. NaN where a resample lacks a class.
    """
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    return np.mean([weighted_auc(counts, true == c, probs[:, c]) for c in classes], axis=0)


def percentile_bounds(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of bootstrap values, NaN resamples (a class missing) left out."""
    low, high = np.nanpercentile(values, [100 * ALPHA / 2, 100 * (1 - ALPHA / 2)])
    return float(low), float(high)


def bootstrap_counts(images: int) -> np.ndarray:
    """``BOOTSTRAP_RESAMPLES`` resamples (with replacement, fixed seed) as how often each drew each image."""
    draws = np.random.default_rng(BOOTSTRAP_SEED).integers(0, images, size=(BOOTSTRAP_RESAMPLES, images))
    return np.stack([np.bincount(d, minlength=images) for d in draws])


Bounds = tuple[float, float] | None  # a 95 % interval; None: not computed (an AUC without probabilities)


def bootstrap_bounds(true: np.ndarray, predicted: np.ndarray, probs: np.ndarray | None) -> tuple[Bounds, Bounds]:
    """95 % bootstrap intervals of accuracy and AUC over the images (the same resamples for both); no AUC
    interval where ``probs`` (images x classes) is None, as where only labels exist."""
    counts = bootstrap_counts(len(true))
    accuracy = percentile_bounds(counts @ (true == predicted) / len(true))
    return accuracy, None if probs is None else percentile_bounds(macro_auc(counts, true, probs))


def interval(bounds: Bounds) -> str:
    return "-" if bounds is None else f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


def bootstrap_intervals(true: np.ndarray, predicted: np.ndarray, probs: np.ndarray | None) -> tuple[str, str]:
    """:func:`bootstrap_bounds` as ``[low, high]`` cells (``-`` for the AUC without probabilities)."""
    accuracy, auc = bootstrap_bounds(true, predicted, probs)
    return interval(accuracy), interval(auc)


def mcnemar_p(correct: np.ndarray, reference_correct: np.ndarray) -> float:
    """Exact McNemar test: two-sided binomial test (p = 0.5) on the images exactly one of the two classifiers
    gets right (per image, same order); 1 when no image is discordant."""
    from scipy.stats import binomtest

    only_this = int(np.sum(correct & ~reference_correct))
    discordant = only_this + int(np.sum(~correct & reference_correct))
    return 1.0 if discordant == 0 else float(binomtest(only_this, discordant, 0.5).pvalue)


def labels_of(evaluation: Evaluation, prediction: str) -> np.ndarray:
    """The predicted class of each image: the denoised prediction's or the fused prior's."""
    return evaluation.prior if prediction == "prior" else evaluation.predicted


def prediction_intervals(evaluation: Evaluation, prediction: str) -> tuple[str, str]:
    """Bootstrap ACC and AUC intervals of the denoised prediction, or the ACC interval alone of the fused prior."""
    probs = None if prediction == "prior" else evaluation.probs
    return bootstrap_intervals(evaluation.true, labels_of(evaluation, prediction), probs)


def paired_p(runs: Runs, dataset: str, row: ModelRow, seed: str, basic_setting: str = "default") -> float | None:
    """McNemar p-value on the test split of one ablation row against ``basic`` of the same seed and of
    ``basic_setting`` (a setting of the diffusion alone, y0 or EMA, leaves ``basic`` unchanged, so its rows pair
    with the default ``basic``), or None when a run is missing."""
    this = row.evaluation(runs, dataset, seed)
    basic = ModelRow("", "basic", "10", "denoised", basic_setting).evaluation(runs, dataset, seed)
    if this is None or basic is None:
        return None
    if this.ids != basic.ids:
        raise ValueError(f"{dataset} seed {seed}: {row.variant} and basic were evaluated on different images")
    return mcnemar_p(labels_of(this, row.prediction) == this.true, basic.predicted == basic.true)


def metric_columns(prediction: str) -> tuple[str, str, str]:
    """The metric CSV's ACC, macro-F1 and AUC columns of the denoised prediction or of the fused prior."""
    prefix = "prior_" if prediction == "prior" else ""
    return f"{prefix}accuracy", f"{prefix}macro_f1", f"{prefix}auc"


def ablation_cells(metrics: Rows, runs: Runs, dataset: str, row: ModelRow, setting: str = "default") -> list[str]:
    """The cells of one ablation row: test-split means over seeds, seed-0 intervals, McNemar against basic.

    The diffusion rows are read from ``setting``, ``basic`` from ``default``: meant for settings of the diffusion
    alone (such as y0), which leave ``basic`` as it is.
    """
    row = row._replace(setting="default" if row.variant == "basic" else setting)
    tests = row.metrics(metrics, dataset, split="test")
    cells = [DATASETS[dataset], row.label, row.samples_cell(), str(len(tests))]
    cells += means(tests, metric_columns(row.prediction))
    first = row.evaluation(runs, dataset)
    if first is None:
        return cells + ["-"] * 4
    cells += prediction_intervals(first, row.prediction)
    if row.variant == "basic":
        return cells + ["-", "-"]
    p_values = {r["seed"]: paired_p(runs, dataset, row, r["seed"]) for r in tests}
    significant = sum(p is not None and p < ALPHA for p in p_values.values())
    return cells + [p_cell(p_values.get("0")), f"{significant} of {len(p_values)}" if len(p_values) > 1 else "-"]


def ablation_table(metrics: Rows, predictions: Rows, setting: str = "default") -> str:
    """Test-split ablation of the small recipe on each dataset: means over seeds, intervals, paired tests."""
    runs = evaluations(predictions)
    rows = [ablation_cells(metrics, runs, d, r, setting) for d in DATASETS for r in ABLATION_ROWS]
    header = ["dataset", "model", "S", "seeds", "ACC", "macro-F1", "AUC", "ACC 95% CI (seed 0)"]
    header += ["AUC 95% CI (seed 0)", "McNemar p vs basic (seed 0)", f"seeds with p < {ALPHA}"]
    return markdown(header, rows)


def target_verdict(dataset: str, auc: float, accuracy: float) -> str:
    """Whether a test AUC and ACC meet the dataset's targets, with every miss spelled out."""
    auc_target, acc_target = TARGETS[dataset]
    misses = [f"AUC {auc:.3f} < {auc_target}"] if auc < auc_target else []
    misses += [f"ACC {accuracy:.3f} < {acc_target}"] if accuracy < acc_target else []
    return "yes" if not misses else "no: " + ", ".join(misses)


def published_table(metrics: Rows) -> str:
    """MedMNIST v2's published test results next to this bundle's basic and full (S=10) means over seeds."""
    rows = []
    for dataset, name in DATASETS.items():
        for method, auc, accuracy in PUBLISHED[dataset]:
            rows.append([name, method, "MedMNIST v2 (published)", f"{auc:.3f}", f"{accuracy:.3f}", "-"])
        for row in OWN_ROWS:
            tests = row.metrics(metrics, dataset, split="test")
            if not tests:
                rows.append([name, row.label, "this bundle", "-", "-", "-"])
                continue
            auc, accuracy = (statistics.mean(float(r[c]) for r in tests) for c in ("auc", "accuracy"))
            source = f"this bundle, mean of {len(tests)} seeds"
            rows.append(
                [name, row.label, source, f"{auc:.3f}", f"{accuracy:.3f}", target_verdict(dataset, auc, accuracy)]
            )
    header = ["dataset", "method", "source", "test AUC", "test ACC", "meets the target (AUC, ACC)"]
    targets = "; ".join(f"{DATASETS[d]} AUC >= {a}, ACC >= {c}" for d, (a, c) in TARGETS.items())
    return markdown(header, rows) + f"\n\nTargets: {targets}."


# the README's headline rows: test means over seeds
HEADLINE_ROWS = [
    ModelRow("`basic` (ResNet-18, this bundle)", "basic", "10", "denoised"),
    ModelRow("DCG prior of `full` (y0)", "full", "10", "prior", "y0"),
    ModelRow("`full` (y0), S = 1", "full", "1", "denoised", "y0"),
    ModelRow("`full` (y0), S = 10", "full", "10", "denoised", "y0"),
    ModelRow("`full` (noise target), S = 10", "full", "10", "denoised"),
]


def headline_table(metrics: Rows) -> str:
    """The README's ablation rows (test, mean ± sd over seeds) beside MedMNIST v2's ResNet-18 (28)."""
    rows = []
    for dataset, name in DATASETS.items():
        for row in HEADLINE_ROWS:
            rows.append(
                [name, row.label, *means(row.metrics(metrics, dataset, split="test"), metric_columns(row.prediction))]
            )
        method, auc, accuracy = PUBLISHED[dataset][0]
        rows.append([name, f"{method}, MedMNIST v2", f"{accuracy:.3f}", "-", f"{auc:.3f}"])
    return markdown(["dataset", "model", "ACC", "macro-F1", "AUC"], rows)


def small_recipe_table(metrics: Rows, predictions: Rows) -> str:
    """The README's one training per dataset (seed 0, S = 1): denoised, prior and majority-class baseline."""
    runs, rows = evaluations(predictions), []
    for dataset, name in DATASETS.items():
        for split in ("validation", "test"):
            found = one(metrics, dataset=dataset, split=split, num_samples="1")
            run = runs[(dataset, found["setting"], found["variant"], found["seed"], "1", split)]
            share = np.bincount(run.true).max() / len(run.true)
            majority = f"{share:.3f} / {2 * share / (1 + share) / run.probs.shape[1]:.3f}"  # F1 0 for the others
            minutes, seconds = divmod(int(found["train_seconds"]), 60)
            cells = [name, f"{split} ({len(run.ids)})", triple(found, ("accuracy", "macro_f1", "kappa"))]
            cells += [triple(found, ("prior_accuracy", "prior_macro_f1", "prior_kappa")), majority]
            rows.append(cells + [f"{minutes} min {seconds} s" if split == "validation" else ""])
    header = ["dataset", "split", "denoised ACC / macro-F1 / kappa", "prior ACC / macro-F1 / kappa"]
    return markdown(header + ["majority ACC / macro-F1", "training wall time"], rows)


def paper_dataset_cells(
    metrics: Rows, runs: Runs, curves: Rows, dataset: str, setting: str, basic_setting: str
) -> list[list[str]]:
    """Rows of one dataset and split: basic, the prior, full with S = 1 and 10, seed 0, test split.

    McNemar pairs the rows with the ``basic`` of ``basic_setting``; where that is another setting, its row is
    that setting's and is not repeated.
    """
    out = []
    for row in ABLATION_ROWS:
        if row.variant not in ("basic", "full") or (row.variant == "basic" and basic_setting != setting):
            continue
        row = row._replace(setting=setting)
        found, evaluation = one(row.metrics(metrics, dataset, seed="0", split="test")), row.evaluation(runs, dataset)
        if found is None or evaluation is None:
            out.append([row.label, "-", "not run"] + ["-"] * 9)
            continue
        accuracy, f1, auc = metric_columns(row.prediction)
        kappa = "prior_kappa" if row.prediction == "prior" else "kappa"
        interval = prediction_intervals(evaluation, row.prediction)[0]
        p_value = None if row.variant == "basic" else paired_p(runs, dataset, row, "0", basic_setting)
        epoch = checkpoint_epoch(curves, dataset=dataset, setting=setting, variant=row.variant, seed="0")
        cells = [row.label, row.samples_cell(), f3(found[accuracy]), interval, *map(f3, (found[f1], found[auc]))]
        cells += [f3(found[kappa]), p_cell(p_value), found["epochs"], epoch, found["train_seconds"]]
        out.append(cells + [str(len(evaluation.ids))])
    return out


def paper_datasets_table(metrics: Rows, predictions: Rows, curves: Rows) -> str:
    """HAM10000 and APTOS at CPU scale (seed 0, test split) with the paper's full-resolution row beside them."""
    runs = evaluations(predictions)
    rows = []
    for dataset, setting, basic_setting, label in PAPER_DATASETS:
        cells = paper_dataset_cells(metrics, runs, curves, dataset, setting, basic_setting)
        rows += [[label, *row] for row in cells]
        if setting == "default":
            accuracy, f1 = PAPER_ROWS[dataset]
            paper = ["DiffMIC paper (224 px, not this setting)", "-", f"{accuracy:.3f}", "-", f"{f1:.3f}"]
            rows.append([label, *paper] + ["-"] * 7)
    header = ["dataset, split", "model", "S", "ACC", "ACC 95% CI", "macro-F1", "AUC", "kappa (quadratic)"]
    header += ["McNemar p vs basic", "epochs", "checkpoint epoch", "training s", "test images"]
    return markdown(header, rows)


def key_metric(dataset: str) -> str:
    """The validation metric that selects a dataset's checkpoint (``key_metric_name`` of its config)."""
    for path in (CONFIGS / "data" / f"{dataset}.yaml", CONFIGS / "train.yaml"):
        found = re.search(r"^key_metric_name:\s*(\w+)", path.read_text(), re.M) if path.is_file() else None
        if found:
            return found.group(1)
    return "macro_f1"


def curve(curves: Rows, tag: str, **run: str) -> list[tuple[int, float]]:
    """(epoch, value) of one tag of one run's training curves, by epoch."""
    return sorted((int(r["epoch"]), float(r["value"])) for r in select(curves, tag=tag, **run))


def checkpoint_epoch(curves: Rows, **run: str) -> str:
    """The epoch of the evaluated checkpoint: the first best validation value of the dataset's key metric."""
    points = curve(curves, key_metric(run["dataset"]), **run)
    if not points:
        return "-"
    best = max(v for _, v in points)
    return str(next(e for e, v in points if v == best))


def triple(row: dict[str, str] | None, columns: Sequence[str]) -> str:
    """``a / b / c`` of some metric columns of a row, ``-`` without the row."""
    return "-" if row is None else " / ".join(f3(row[c]) for c in columns)


def one(rows: Rows, **fields: str) -> dict[str, str] | None:
    """The single row matching the fields, or None."""
    found = select(rows, **fields)
    return found[0] if found else None


PRIOR_ACC_AUC = ("prior_accuracy", "prior_auc")


def study_cells(
    metrics: Rows, curves: Rows, setting: str, dataset: str, with_device: bool = False, auc: str = "auc"
) -> list[str]:
    """One row of the study table: validation metrics of a setting's seed-0 ``full`` run, test for information;
    ``auc``: the column of the denoised AUC (``auc_label_mean``: study 4's tie-free score)."""
    run = dict(dataset=dataset, setting=setting, variant="full", seed="0")
    rows = select(metrics, **run)
    val1, val10 = one(rows, split="validation", num_samples="1"), one(rows, split="validation", num_samples="10")
    test10 = one(rows, split="test", num_samples="10")
    if val1 is None or val10 is None:
        last = curve(curves, "prior_accuracy", **run)
        status = "not finished in the lease" + (f" (last validated epoch {last[-1][0]})" if last else "")
        return [setting, display(dataset)] + ["-"] * with_device + ["-", "-", status] + ["-"] * 7
    overrides = " ".join(o for o in val10["overrides"].split() if not o.startswith("progress_bar=")) or "-"
    gaps = [float(r["accuracy"]) - float(r["prior_accuracy"]) for r in (val1, val10)]
    cells = [setting, display(dataset), *([val10["device"]] if with_device else []), overrides]
    cells += [checkpoint_epoch(curves, **run), *(triple(r, ("accuracy", "macro_f1", auc)) for r in (val1, val10))]
    cells += [triple(val10, PRIOR_ACC_AUC), " / ".join(f"{g:+.3f}" for g in gaps)]
    return cells + [val10["train_seconds"], triple(test10, ("accuracy", auc)), triple(test10, PRIOR_ACC_AUC)]


def study_table(
    metrics: Rows,
    curves: Rows,
    settings: Sequence[str] | None = None,
    with_device: bool = False,
    auc: str = "auc",
    datasets: Sequence[str] = tuple(DATASETS),
) -> str:
    """The settings study on the validation split (seed 0, ``full``) from ``collect.py``'s metrics and curves;
    settings without rows: not finished. ``settings``: those shown (None: all); ``with_device``: a column naming
    each run's device (for rows of several sessions); ``auc``: as in :func:`study_cells`; ``datasets``: in order."""
    found = {r["setting"] for r in select(curves, variant="full", seed="0")} | {
        r["setting"] for r in select(metrics, variant="full", seed="0")
    }
    settings = found if settings is None else found & set(settings)
    finished = {r["setting"] for r in select(metrics, variant="full", seed="0", split="validation")}
    order = sorted(settings, key=lambda s: (s != "default", s not in finished, s))
    rows = [
        study_cells(metrics, curves, s, d, with_device, auc)
        for s in order
        for d in datasets
        if select(curves, setting=s, dataset=d, variant="full", seed="0") or select(metrics, setting=s, dataset=d)
    ]
    header = (
        ["setting", "dataset"] + ["device"] * with_device + ["overrides", "checkpoint epoch", "val S=1 ACC / F1 / AUC"]
    )
    header += ["val S=10 ACC / F1 / AUC", "val prior ACC / AUC", "val denoised - prior ACC (S=1 / S=10)"]
    header += ["training s", "test S=10 ACC / AUC (information)", "test prior ACC / AUC (information)"]
    if auc != "auc":  # the score the denoised AUCs rank by
        score = f"AUC ({auc.removeprefix('auc_').replace('_', ' ')})"
        header = [h.replace("AUC", score) if " S=" in h else h for h in header]
    return markdown(header, rows)


def test_selection_table(rows: Rows) -> str:
    """The authors' checkpoint selection on the test split against the bundle's on validation
    (``test_selection.py``): the test accuracy each rule reports."""
    from test_selection import markdown, summarize  # beside this script

    return markdown(summarize(rows))


# diagnostics.py's measures in column order, with their columns; a share of labels changed shows in %
DIAGNOSTIC_COLUMNS = [
    ("prior", ("accuracy", "auc")),
    ("denoised", ("accuracy", "auc", "changed_vs_prior")),
    ("prior_mean_chain", ("changed_vs_prior",)),
    ("features_swapped", ("changed_vs_denoised",)),
    ("uniform_prior", ("accuracy", "changed_vs_denoised")),
    ("stacker_prior", ("accuracy", "auc")),
    ("stacker_prior_features", ("accuracy", "auc")),
]


def diagnostics_table(rows: Rows) -> str:
    """What the denoiser adds to its prior (``diagnostics.py``): one row per run and split, S = 1."""

    def cell(row: dict[str, str] | None, columns: Sequence[str]) -> str:
        if row is None:
            return "-"
        return " / ".join(f"{100 * float(row[c]):.1f} %" if c.startswith("changed") else f3(row[c]) for c in columns)

    table = []
    for run in sorted({(r["setting"], r["dataset"], r["seed"]) for r in rows}):
        for split in ("validation", "test"):
            found = {r["measure"]: r for r in select(rows, setting=run[0], dataset=run[1], seed=run[2], split=split)}
            if not found:
                continue
            cells = [run[0], display(run[1]), run[2], split, found["denoised"]["images"]]
            table.append(cells + [cell(found.get(m), columns) for m, columns in DIAGNOSTIC_COLUMNS])
    header = ["setting", "dataset", "seed", "split", "images", "prior ACC / AUC"]
    header += ["denoised ACC / AUC / labels not the prior's", "chain from the prior mean: labels not the prior's"]
    header += ["rho(x) of another image: labels changed", "uniform prior: ACC / labels changed"]
    header += ["logistic [log prior] ACC / AUC", "logistic [log prior, rho(x)] ACC / AUC"]
    return markdown(header, table)


def in_sample_table(rows: Rows) -> str:
    """The fused prior on the training images (in-sample: the priors the denoiser learns from; out of fold under
    ``prior_folds``, with the in-sample one of the copies' epoch) against the validation and test images
    (``diagnostics.py --splits train validation test``): accuracy and confidence."""
    columns = [("train", "prior"), ("train", "prior_out_of_fold"), ("train", "prior_latest")]
    columns += [("validation", "prior"), ("test", "prior")]
    table = []
    for run in sorted({(r["setting"], r["dataset"], r["seed"]) for r in select(rows, split="train")}):
        found = {(r["split"], r["measure"]): r for r in select(rows, setting=run[0], dataset=run[1], seed=run[2])}
        cells = [triple(found.get(column), ("accuracy", "confidence")) for column in columns]
        table.append([run[0], display(run[1]), run[2], *cells])
    header = ["setting", "dataset", "seed", "train prior ACC / confidence (in-sample)"]
    header += ["train out-of-fold prior ACC / confidence", "train in-sample prior at the copies' epoch"]
    header += ["validation prior ACC / confidence"]
    return markdown(header + ["test prior ACC / confidence"], table)


def seeds_cells(metrics: Rows, setting: str, dataset: str) -> tuple[list[str], list[float]]:
    """One row of the seeds table and the validation accuracies (S = 1 and 10, every seed) it averages."""
    rows = select(metrics, dataset=dataset, setting=setting, variant="full")

    def values(split: str, samples: str, column: str) -> list[float]:
        found = sorted(select(rows, split=split, num_samples=samples), key=lambda r: int(r["seed"]))
        return [float(r[column]) for r in found]

    val1, val10 = values("validation", "1", "accuracy"), values("validation", "10", "accuracy")
    gaps = [a - b for a, b in zip(val10, values("validation", "10", "prior_accuracy"), strict=True)]
    test = [mean_sd(values("test", "10", c)) for c in ("accuracy", "auc", "prior_accuracy", "prior_auc")]
    cells = [setting, DATASETS[dataset], rows[0]["device"], str(len(val10)), mean_sd(val1), mean_sd(val10)]
    cells += [mean_sd(values("validation", "10", "prior_accuracy")), mean_sd(gaps)]
    return cells + [f"{test[0]} / {test[1]}", f"{test[2]} / {test[3]}"], val1 + val10


def seeds_table(metrics: Rows) -> str:
    """Settings of ``full`` run with several seeds, on the validation split, and the one it chooses.

    The choice: the highest validation ACC averaged over both datasets, S = 1 and 10 and every seed.
    """
    validated = select(metrics, variant="full", split="validation", num_samples="10")
    settings = sorted(
        s
        for s in {r["setting"] for r in validated}
        if all(len(select(validated, setting=s, dataset=d)) > 1 for d in DATASETS)
    )
    rows, scores = [], {}
    for setting in settings:
        accuracies = []
        for dataset in DATASETS:
            cells, values = seeds_cells(metrics, setting, dataset)
            rows.append(cells)
            accuracies += values
        scores[setting] = statistics.mean(accuracies)
    header = ["setting", "dataset", "card", "seeds", "val S=1 ACC", "val S=10 ACC", "val prior ACC"]
    header += ["val S=10 - prior ACC", "test S=10 ACC / AUC (information)", "test prior ACC / AUC (information)"]
    ranking = ", ".join(f"{s} {v:.3f}" for s, v in sorted(scores.items(), key=lambda item: -item[1]))
    return markdown(header, rows) + f"\n\nMean validation ACC over both datasets, S = 1 and 10, all seeds: {ranking}."


def panels(rows: int, columns: int) -> tuple[Any, Any]:
    """A figure of rows x columns panels sharing their x axes, 5 x 3.25 inches each."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5 * columns, 3.25 * rows), layout="constrained")
    return fig, fig.subplots(rows, columns, sharex=True, squeeze=False)


def dress(ax: Any, title: str, ylabel: str, xlabel: str | None) -> None:
    """A panel's title, axis labels (no x label above the bottom row) and light grid."""
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def write(path: Path, content: Any) -> None:
    """A page's text or a figure's PNG, written whole."""
    if isinstance(content, str):
        write_whole(path, lambda partial: partial.write_text(content))
    else:
        write_whole(path, lambda partial: content.savefig(partial, format="png", dpi=110))


def draw_curves(curves: Rows, path: Path, settings: Sequence[str] = ("default",)) -> None:
    """Validation ACC and AUC of the denoised prediction and of the DCG prior against epoch (``full``, seeds 0-2)
    from ``collect.py``'s curves: one column per dataset, one row per metric, one colour per run. ``settings``:
    the runs' (``train_evaluate.py --setting``), named in the legend when more than one."""
    fig, axes = panels(2, len(DATASETS))
    for column, (dataset, name) in enumerate(DATASETS.items()):
        for row, (metric, label) in enumerate((("accuracy", "validation ACC"), ("auc", "validation AUC"))):
            ax = axes[row][column]
            runs = [(setting, seed) for setting in settings for seed in SEEDS]
            for index, (setting, seed) in enumerate(runs):
                run = dict(dataset=dataset, setting=setting, variant="full", seed=seed)
                run_name = f"{setting} seed {seed}" if len(settings) > 1 else f"seed {seed}"
                for tag, style, kind in ((metric, "-", "denoised"), (f"prior_{metric}", "--", "DCG prior")):
                    points = curve(curves, tag, **run)
                    if points:
                        epochs, values = zip(*points, strict=True)
                        ax.plot(epochs, values, style, color=f"C{index}", label=f"{run_name}, {kind}")
            dress(ax, f"{name}: {label}", label, "epoch" if row == 1 else None)
    axes[0][0].legend(fontsize="small", ncol=2)
    recipe = "small recipe" if settings == ("default",) else f"small recipe, {', '.join(settings)}"
    fig.suptitle(f"full, {recipe}, validation split: denoised prediction (S=1, solid) and fused DCG prior (dashed)")
    write(path, fig)


AGREEMENT = 0.99  # the "agrees with the full chain on at least 99 % of test images"
CHAINS = (("1", "noise", "S=1"), ("10", "noise", "S=10"), ("1", "prior_mean", "from the prior mean"))


def full_chain_steps(rows: Rows) -> int:
    """T: the DDIM steps of the full chain (the most steps of any DDIM row)."""
    return max(int(r["steps"]) for r in rows if r["sampler"] == "ddim")


def steps_label(sampler: str, steps: int, total: int) -> str:
    if sampler == "ddpm":
        return f"DDPM, {steps} ancestral steps"
    return f"{steps} (full chain)" if steps == total else str(steps)


def ddim_chain(rows: Rows, samples: str, start: str) -> list[dict[str, str]]:
    """The DDIM rows of one chain kind (S and start), by K."""
    return sorted(select(rows, sampler="ddim", samples=samples, start=start), key=lambda r: int(r["steps"]))


def ordered_datasets(rows: Rows) -> list[str]:
    """The datasets of the rows: the ablation's in page order, then any other in order of appearance."""
    present = dict.fromkeys(r["dataset"] for r in rows)
    return [d for d in DATASETS if d in present] + [d for d in present if d not in DATASETS]


def sampling_steps_table(rows: Rows, split: str = "test", setting: str = "default") -> str:
    """ACC / F1 / AUC and agreement with the full chain per number of reverse steps, for each chain kind."""
    rows = select(rows, split=split, setting=setting)
    total, out = full_chain_steps(rows), []
    for dataset in ordered_datasets(rows):
        mine = select(rows, dataset=dataset)
        ladder = sorted({(r["sampler"], int(r["steps"])) for r in mine}, key=lambda s: (s[0] == "ddpm", s[1]))
        for sampler, steps in ladder:
            cells = [dataset, steps_label(sampler, steps, total)]
            for samples, start, _ in CHAINS:
                row = one(mine, sampler=sampler, steps=str(steps), samples=samples, start=start)
                cells += [triple(row, ("accuracy", "macro_f1", "auc")), triple(row, ("agreement_full_chain",))]
            s10 = one(mine, sampler=sampler, steps=str(steps), samples="10", start="noise")
            cells.append("-" if s10 is None else f"{1000 * float(s10['sample_seconds']) / int(s10['images']):.2f}")
            out.append(cells)
    header = ["dataset", "K (DDIM steps)"]
    for _, _, name in CHAINS:
        header += [f"{name}: ACC / F1 / AUC", f"{name}: agreement"]
    return markdown(header + ["ms per image, S=10 (sampling only)"], out)


def smallest_agreeing_k_table(rows: Rows, split: str = "test", setting: str = "default") -> str:
    """The smallest K whose predicted labels agree with the full chain's on at least 99 % of the images."""
    rows = select(rows, split=split, sampler="ddim", setting=setting)
    total, out = full_chain_steps(rows), []
    for dataset in ordered_datasets(rows):
        for samples, start, name in CHAINS:
            mine = ddim_chain(select(rows, dataset=dataset), samples, start)
            if not mine:
                continue
            # smallest K from which every larger K agrees too: one lucky small K does not count
            k = next(
                r for i, r in enumerate(mine) if all(float(x["agreement_full_chain"]) >= AGREEMENT for x in mine[i:])
            )
            full = one(mine, steps=str(total))
            cells = [dataset, name, k["steps"], *map(f3, (k["agreement_full_chain"], k["accuracy"]))]
            out.append(cells + [f3(full["accuracy"]), f3(full["prior_accuracy"]), mine[0]["images"]])
    header = ["dataset", "chain", f"smallest K with >= {AGREEMENT:.0%} agreement", "its agreement", "its ACC"]
    return markdown(header + ["full-chain ACC", "prior ACC", "images"], out)


def draw_sampling_steps(rows: Rows, path: Path, split: str = "test", setting: str = "default") -> None:
    """Test ACC and AUC against the number of DDIM steps (log scale), one column per dataset.

    Lines: S=1 and S=10 chains from N(prior, I) and the deterministic chain from the prior mean; the fused
    DCG prior as a dashed line; DDPM's T ancestral steps as markers at T. Written to ``<path>.partial``
    and renamed.
    """
    rows = select(rows, split=split, setting=setting)
    datasets = ordered_datasets(rows)
    fig, axes = panels(2, len(datasets))
    for column, dataset in enumerate(datasets):
        mine = select(rows, dataset=dataset)
        for row, (metric, label) in enumerate((("accuracy", "test ACC"), ("auc", "test AUC"))):
            ax = axes[row][column]
            for color, (samples, start, name) in zip(("C0", "C1", "C2"), CHAINS, strict=True):
                if chain := ddim_chain(mine, samples, start):
                    steps, values = [int(r["steps"]) for r in chain], [float(r[metric]) for r in chain]
                    ax.plot(steps, values, "o-", color=color, label=f"DDIM, {name}")
                for r in select(mine, sampler="ddpm", samples=samples, start=start):
                    ax.plot([int(r["steps"])], [float(r[metric])], "s", color=color, mfc="none", label=f"DDPM, {name}")
            prior = float(mine[0][f"prior_{metric}"])
            ax.axhline(prior, color="k", ls="--", label="fused DCG prior")
            low, high = ax.get_ylim()  # axhline does not widen the limits: keep a prior above every chain in view
            ax.set_ylim(min(low, prior - 0.01), max(high, prior + 0.01))
            ax.set_xscale("log")
            dress(ax, f"{display(dataset)}: {label}", label, "reverse steps K" if row == 1 else None)
    axes[0][0].legend(fontsize="small")
    write(path, fig)


# ---------------------------------------------------------------- issue 16: equal schedules, a second view, uncertainty
REFERRED = (0.1, 0.2, 0.3)  # shares of the most uncertain images referred to a reader (uncertainty table)


MEDMNIST_SCHEDULE_ROWS = [
    ModelRow("basic (ResNet-18)", "basic", "10", "denoised", "basic_medmnist"),
    ModelRow("DCG prior (fused, of full)", "full", "10", "prior", "y0_medmnist"),
    ModelRow("full, S=1", "full", "1", "denoised", "y0_medmnist"),
    ModelRow("full, S=10", "full", "10", "denoised", "y0_medmnist"),
]


def published_verdict(dataset: str, accuracy: Bounds, auc: Bounds) -> str:
    """Study 3's rule (A): the published ResNet-18 (28) test ACC and AUC each inside or below the seed-0 interval."""
    _, published_auc, published_accuracy = PUBLISHED[dataset][0]
    checked = (("ACC", published_accuracy, accuracy), ("AUC", published_auc, auc))
    misses = [
        f"{name} {value:.3f} above " + ("no interval" if bounds is None else f"{bounds[1]:.3f}")
        for name, value, bounds in checked
        if bounds is None or value > bounds[1]
    ]
    return "reached" if not misses else "not reached: published " + ", ".join(misses)


def medmnist_schedule_table(metrics: Rows, predictions: Rows) -> str:
    """Study 3: basic, the prior and full on MedMNIST v2's schedule; validation decides, test is for information."""
    runs = evaluations(predictions)
    rows = []
    for dataset, name in DATASETS.items():
        for row in MEDMNIST_SCHEDULE_ROWS:
            found = row.metrics(metrics, dataset)
            if not found:
                continue
            accuracy, _, auc = metric_columns(row.prediction)
            ranked = row.variant != "basic" and row.prediction == "denoised"  # study 4's score: the label mean
            auc = "auc_label_mean" if ranked else auc
            cells = [name, row.label, str(len({r["seed"] for r in found}))]
            for split in ("validation", "test"):
                cells += means(select(found, split=split), (accuracy, auc))
            first = row.evaluation(runs, dataset)
            bounds: tuple[Bounds, Bounds] = (None, None)
            if first is not None:
                scores = first.prior_probs if row.prediction == "prior" else first.label_mean if ranked else first.probs
                bounds = bootstrap_bounds(first.true, labels_of(first, row.prediction), scores)
            cells += [*map(interval, bounds), published_verdict(dataset, *bounds) if row.variant == "basic" else "-"]
            rows.append(cells)
    header = ["dataset", "model", "seeds", "val ACC", "val AUC", "test ACC", "test AUC", "test ACC 95% CI (seed 0)"]
    return markdown(header + ["test AUC 95% CI (seed 0)", "published ResNet-18 (28), rule (A)"], rows)


def accuracy_and_auc(true: np.ndarray, probs: np.ndarray) -> str:
    """``ACC / AUC`` of class probabilities."""
    auc = macro_auc(np.ones((1, len(true))), true, probs)[0]
    return f"{np.mean(probs.argmax(1) == true):.3f} / {auc:.3f}"


def second_view_table(predictions: Rows) -> str:
    """The bound of a second view: the prior averaged with an independently trained ResNet-18 (``basic``), beside
    the prior, ``basic`` and the denoised prediction (S = 10) of the same seed (study 3's runs)."""
    runs = evaluations(predictions)
    rows = []
    for (dataset, setting, variant, seed, samples, split), full in sorted(runs.items()):
        basic = runs.get((dataset, "basic_medmnist", "basic", seed, "10", split))
        if (setting, variant, samples) != ("y0_medmnist", "full", "10") or full.prior_probs is None or basic is None:
            continue
        if basic.ids != full.ids:
            raise ValueError(f"{dataset} seed {seed} {split}: basic and full were evaluated on different images")
        averaged = (full.prior_probs + basic.probs) / 2
        cells = [display(dataset), seed, split, str(len(full.ids))]
        scores = (full.prior_probs, basic.probs, full.probs, averaged, (full.probs + basic.probs) / 2)
        cells += [accuracy_and_auc(full.true, p) for p in scores]
        cells.append(f"{mcnemar_p(averaged.argmax(1) == full.true, full.prior == full.true):.3g}")
        rows.append(cells)
    header = ["dataset", "seed", "split", "images", "prior ACC / AUC", "basic ACC / AUC", "denoised S=10 ACC / AUC"]
    header += ["mean of prior and basic ACC / AUC", "mean of denoised and basic ACC / AUC"]
    return markdown(header + ["McNemar p, mean of prior and basic vs prior"], rows)


def pooled(found: Sequence[Evaluation]) -> Evaluation:
    """Several evaluations' images as one (a field one of them lacks is None)."""

    def join(field: str):
        parts = [getattr(e, field) for e in found]
        if any(p is None for p in parts):
            return None
        return [i for p in parts for i in p] if field == "ids" else np.concatenate(parts)

    return Evaluation(*map(join, Evaluation._fields))


def image_auc(evaluation: Evaluation, scores: np.ndarray) -> float:
    """The AUC of one evaluation's images ranked by ``scores`` (images x classes)."""
    return float(macro_auc(np.ones((1, len(evaluation.true))), evaluation.true, scores)[0])


def paired_cells(correct: np.ndarray, auc: float, other_correct: np.ndarray, other_auc: float) -> list[str]:
    """Two predictions of the same images (per image: right or not; and their AUCs): each one's ACC / AUC, the
    ACC difference, the images only one of them gets right, and the McNemar p-value."""
    only, only_other = np.sum(correct & ~other_correct), np.sum(~correct & other_correct)
    cells = [f"{correct.mean():.3f} / {auc:.3f}", f"{other_correct.mean():.3f} / {other_auc:.3f}"]
    return cells + [
        f"{correct.mean() - other_correct.mean():+.3f}",
        f"{only} / {only_other}",
        p_cell(mcnemar_p(correct, other_correct)),
    ]


def paired_auc_difference(pairs: Sequence[tuple[Evaluation, np.ndarray, np.ndarray]]) -> str:
    """The AUC of one score minus another's on the same images, averaged over evaluations of the same images
    (seeds), with its 95 % paired bootstrap interval and two-sided p-value: each resample draws images, the same
    draw for both scores and every seed (the images are the unit), and p is twice the share of resamples on the
    far side of 0 (at most 1). ``pairs``: (evaluation, its scores, the other scores), images x classes."""
    ids = pairs[0][0].ids
    if any(e.ids != ids for e, _, _ in pairs):
        raise ValueError("a paired AUC test needs every evaluation on the same images in the same order")
    counts = np.vstack([np.ones((1, len(ids))), bootstrap_counts(len(ids))])  # row 0: the images themselves
    differences = np.mean([macro_auc(counts, e.true, a) - macro_auc(counts, e.true, b) for e, a, b in pairs], axis=0)
    observed, resampled = differences[0], differences[1:][~np.isnan(differences[1:])]
    p_value = min(1.0, 2 * min(np.mean(resampled <= 0), np.mean(resampled >= 0)))
    p_text = f"< {2 / len(resampled):.2g}" if p_value == 0 else p_cell(p_value)  # no resample beyond 0
    low, high = percentile_bounds(resampled)
    return f"{observed:+.3f} [{low:+.3f}, {high:+.3f}], p {p_text}"


def compared_aucs(pairs: dict[str, tuple[Evaluation, np.ndarray, np.ndarray]]) -> dict[str, tuple[float, float, str]]:
    """Two scores of the same images per seed, ``pairs``: {seed: (evaluation, its scores, the other scores)}: each
    seed's two AUCs and :func:`paired_auc_difference`, and for several seeds the same under ``pooled`` (the AUCs:
    the seeds' mean, as scores of different models do not rank together)."""
    groups = {seed: [pair] for seed, pair in pairs.items()}
    if len(pairs) > 1:
        groups["pooled"] = list(pairs.values())
    compared = {}
    for seed, group in groups.items():
        auc, other_auc = np.mean([(image_auc(e, a), image_auc(e, b)) for e, a, b in group], axis=0)
        compared[seed] = (float(auc), float(other_auc), paired_auc_difference(group))
    return compared


def seeds_and_pooled(found: dict[str, tuple[Evaluation, ...]]) -> list[tuple[str, tuple[Evaluation, ...]]]:
    """Each seed's evaluations (of the same images), then, for several seeds, their images pooled."""
    seeds = list(found.items())
    if len(seeds) == 1:
        return seeds
    return seeds + [("pooled", tuple(pooled(list(runs)) for runs in zip(*found.values(), strict=True)))]


def denoised_vs_prior_table(predictions: Rows, diagnostics: Rows, setting: str, dataset: str) -> str:
    """Study 8: one setting's denoised prediction (S = 10) against its own fused prior, per seed and split, then the
    seeds' images pooled (their AUC: the seeds' mean, as scores of different models do not rank together): the
    images only one of the two gets right, the McNemar p-value, and the share of labels that another image's
    rho(x) changes (``diagnostics.py``)."""
    runs, rows = evaluations(predictions), []
    for split in ("validation", "test"):
        found = {
            k[3]: (e,)
            for k, e in sorted(runs.items())
            if k[:3] == (dataset, setting, "full") and k[4:] == ("10", split)
        }
        compared = compared_aucs({seed: (e, e.label_mean, e.prior_probs) for seed, (e,) in found.items()})
        for seed, (e,) in seeds_and_pooled(found):
            swap = [r for r in select(diagnostics, setting=setting, dataset=dataset, seed=seed, split=split)
                    if r["measure"] == "features_swapped"]  # fmt: skip
            auc, prior_auc, difference = compared[seed]
            cells = [display(dataset), seed, split, str(len(e.ids))]
            cells += paired_cells(e.predicted == e.true, auc, e.prior == e.true, prior_auc) + [difference]
            rows.append(cells + [f"{100 * float(swap[0]['changed_vs_denoised']):.1f} %" if swap else "-"])
    header = ["dataset", "seed", "split", "images", "denoised S=10 ACC / AUC (label mean)", "prior ACC / AUC"]
    header += ["denoised - prior ACC", "images only the denoised / only the prior gets right", "McNemar p"]
    header += [f"denoised - prior AUC {AUC_TEST}"]
    return markdown(header + ["rho(x) of another image: labels changed"], rows)


def denoised_vs_basic_table(
    predictions: Rows, setting: str, basic_settings: Sequence[str], datasets: Sequence[str] = tuple(DATASETS)
) -> str:
    """Study 11: one setting's denoised prediction (S = 10, AUC of study 4's label mean) against the ``basic``
    ResNet-18 of each of ``basic_settings`` (its softmax's AUC), the same seed against the same seed, per dataset
    (of ``datasets``) and split, then the seeds' images pooled (AUC: the seeds' mean)."""
    runs, rows = evaluations(predictions), []

    def basic(dataset: str, basic_setting: str, seed: str, split: str) -> Evaluation | None:
        """The basic run's evaluation (basic ignores S: the first one evaluated)."""
        found = [
            e for k, e in sorted(runs.items()) if k[:4] == (dataset, basic_setting, "basic", seed) and k[5] == split
        ]
        return found[0] if found else None

    for dataset, basic_setting, split in itertools.product(datasets, basic_settings, ("validation", "test")):
        pairs = {}
        for seed in SEEDS:
            full = runs.get((dataset, setting, "full", seed, "10", split))
            other = basic(dataset, basic_setting, seed, split)
            if full is None or other is None:
                continue
            if full.ids != other.ids:
                raise ValueError(f"{dataset} seed {seed} {split}: {setting} and {basic_setting} saw different images")
            pairs[seed] = (full, other)
        if not pairs:
            continue
        compared = compared_aucs({seed: (f, f.label_mean, b.probs) for seed, (f, b) in pairs.items()})
        for seed, (full, other) in seeds_and_pooled(pairs):
            auc, basic_auc, difference = compared[seed]
            cells = [display(dataset), basic_setting, split, seed, str(len(full.ids))]
            right, other_right = full.predicted == full.true, other.predicted == other.true
            rows.append(cells + paired_cells(right, auc, other_right, basic_auc) + [difference])
    header = ["dataset", "basic", "split", "seed", "images", f"{setting} S=10 ACC / AUC (label mean)"]
    header += [
        "basic ACC / AUC",
        f"{setting} - basic ACC",
        f"images only {setting} / only basic gets right",
        "McNemar p",
        f"{setting} - basic AUC {AUC_TEST}",
    ]
    return markdown(header, rows)


def epoch_mean_table(curves: Rows, last: int = 10) -> str:
    """The denoised prediction against its prior without checkpoint selection: each run's validation ACC (S = 1,
    the evaluation logged every joint epoch) averaged over its last ``last`` epochs, and the epochs where the
    denoised ACC is above / below the prior's. The key metric picks a run's checkpoint by the denoised accuracy,
    so two settings keep different epochs of the same DCG; here they are read at the same epochs. (The curves'
    denoised AUC of runs trained before 2026-12-02 is the tied probabilities', not study 4's label mean: left
    out.)"""
    table = []
    for setting, dataset, seed in sorted(
        {(r["setting"], r["dataset"], r["seed"]) for r in select(curves, variant="full")}
    ):
        run = dict(setting=setting, dataset=dataset, seed=seed, variant="full")
        denoised, prior = (dict(curve(curves, tag, **run)) for tag in ("accuracy", "prior_accuracy"))
        epochs = sorted(denoised)[-last:]
        gaps = [denoised[e] - prior[e] for e in epochs]
        cells = [setting, display(dataset), seed, f"{epochs[0]}-{epochs[-1]}"]
        cells += [f"{np.mean([denoised[e] for e in epochs]):.3f}", f"{np.mean([prior[e] for e in epochs]):.3f}"]
        table.append(cells + [f"{np.mean(gaps):+.3f}", f"{sum(g > 0 for g in gaps)} / {sum(g < 0 for g in gaps)}"])
    header = ["setting", "dataset", "seed", "epochs", "denoised ACC (S=1, mean)", "prior ACC (mean)"]
    return markdown(header + ["denoised - prior ACC", "epochs denoised above / below the prior"], table)


def uncertainties(evaluation: Evaluation) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each uncertainty compared, with the correctness of the prediction it goes with: the denoised entropy and
    the samples' disagreement (the denoised label), the fused prior's softmax entropy (the prior's label)."""
    from scipy.stats import entropy  # per row, in nats (0 log 0 = 0)

    denoised, prior = evaluation.predicted == evaluation.true, evaluation.prior == evaluation.true
    return {
        "denoised entropy": (entropy(evaluation.probs, axis=1), denoised),
        "samples' disagreement": (1.0 - evaluation.agreement, denoised),
        "prior entropy": (entropy(evaluation.prior_probs, axis=1), prior),
    }


def referred_accuracy(correct: np.ndarray, uncertainty: np.ndarray, share: float) -> float:
    """Accuracy on the images kept when the ``share`` most uncertain are referred (ties: the later image first)."""
    keep = len(correct) - int(round(share * len(correct)))
    return float(np.mean(correct[np.argsort(uncertainty, kind="stable")[:keep]]))


def error_auroc(correct: np.ndarray, uncertainty: np.ndarray) -> float:
    """How well the uncertainty ranks the wrong predictions first (ROC AUC; ties count half)."""
    counts = np.ones((1, len(correct)))
    return float(weighted_auc(counts, ~correct, uncertainty)[0]) if 0 < correct.sum() < len(correct) else math.nan


def uncertainty_table(predictions: Rows, settings: Sequence[str] | None = None) -> str:
    """Does the diffusion's uncertainty flag errors better than the prior's own entropy? Error AUROC, and the
    accuracy left when the most uncertain images are referred, of every ``full`` evaluation with S = 10 that
    recorded the prior's probabilities (of ``settings`` only, where given), and the seeds' mean where a setting
    has several."""
    measured: dict[tuple[str, str, str], dict[str, list[list[float]]]] = {}  # per seed: per uncertainty
    for (dataset, setting, variant, seed, samples, split), found in sorted(evaluations(predictions).items()):
        if variant != "full" or samples != "10" or found.prior_probs is None:
            continue
        if settings is not None and setting not in settings:
            continue
        values = measured.setdefault((setting, dataset, split), {})
        for u, correct in uncertainties(found).values():
            referred = [referred_accuracy(correct, u, s) if np.ptp(u) > 0 else math.nan for s in REFERRED]
            values.setdefault(seed, []).append([error_auroc(correct, u), *referred])
    rows = []
    for (setting, dataset, split), values in sorted(measured.items(), key=lambda item: (item[0][1], item[0][0])):
        if len(values) > 1:
            values = {**values, "mean": np.mean(list(values.values()), axis=0).tolist()}
        for seed, measures in values.items():
            cells = [setting, display(dataset), seed, split]
            for auroc, *referred in measures:
                kept = " / ".join(f"{a:.3f}" for a in referred)
                equal = "- (equal on every image)" if seed != "mean" else "-"
                cells += [f"{auroc:.3f}", equal if math.isnan(referred[0]) else kept]
            rows.append(cells)
    shares = "/".join(f"{100 * s:.0f}" for s in REFERRED)
    header = ["setting", "dataset", "seed", "split"]
    for name in ("denoised entropy", "samples' disagreement", "prior entropy"):
        header += [f"{name}: error AUROC", f"{name}: ACC with {shares} % referred"]
    return markdown(header, rows)


def draw_risk_coverage(predictions: Rows, path: Path, split: str = "test") -> None:
    """Accuracy of the kept images against the share referred, most uncertain first, for each uncertainty of
    :func:`uncertainties`: one panel per ``full`` evaluation with S = 10 and the prior's probabilities."""
    found = {
        k: e
        for k, e in sorted(evaluations(predictions).items())
        if (k[2], k[4], k[5]) == ("full", "10", split) and e.prior_probs is not None
    }
    fig, axes = panels(1, max(len(found), 1))
    shares = np.linspace(0.0, 0.5, 51)
    for ax, ((dataset, setting, _, seed, _, _), evaluation) in zip(axes[0], found.items(), strict=False):
        for name, (u, correct) in uncertainties(evaluation).items():
            if np.ptp(u) > 0:  # an uncertainty equal on every image ranks nothing (S samples that all agree)
                ax.plot(100 * shares, [referred_accuracy(correct, u, s) for s in shares], label=name)
        title = f"{display(dataset)}, {setting}, seed {seed}, {split}"
        dress(ax, title, "accuracy of the rest", "images referred, most uncertain first (%)")
    axes[0][0].legend(fontsize="small")
    write(path, fig)


def ranking_table(metrics: Rows) -> str:
    """Study 4: the denoised AUC under three ranking scores, and the share of tied pairs of the current one."""
    rows = []
    order = ("setting", "dataset", "seed", "split", "num_samples")
    for r in sorted(metrics, key=lambda r: (*(r[k] for k in order[:3]), r["split"] != "validation", r[order[4]])):
        if r["variant"] == "basic" or r.get("auc_label_mean", "") in ("", "nan"):
            continue
        cells = [r["setting"], display(r["dataset"]), *(r[k] for k in order[2:])]
        cells += [f3(r["auc"]), f"{100 * float(r['auc_tied_pairs']):.1f} %", f3(r["auc_label_mean"])]
        rows.append(cells + [f3(r["auc_then_prior"]), f3(r["prior_auc"])])
    header = ["setting", "dataset", "seed", "split", "S", "AUC: probabilities", "tied pairs: probabilities"]
    return markdown(header + ["AUC: unclipped label mean", "AUC: probabilities then prior", "prior AUC"], rows)


class Source(NamedTuple):
    """Where a results CSV came from: what its rows do not say (the command; the day where it has no ``date``)."""

    date: str  # of the session; for the CSVs of later days, the day their commit added them
    command: str  # the measuring command in short; the log's section (``log``) or the page has it in full
    log: str = ""  # the heading of the session in benchmarks_history.md


GPU1 = "GPU session of 2026-11-26 (NVIDIA H200, 16 CPU cores)"
GPU2 = "GPU session 2 of 2026-11-26 (NVIDIA H200): ablation of the small recipe"
GPU3 = "GPU session 3 of 2026-11-26 (NVIDIA H100): the settings study, and y0 for the small recipe"
CPU1 = "CPU session of 2026-11-26 (AMD EPYC, 2 cores): evaluation, accuracy against K, speed"
CPU2 = "CPU session 2 of 2026-11-26 (AMD EPYC, 2 cores): HAM10000 and APTOS 2019 at 28 px"
CPU3 = "CPU session 3 of 2026-11-27 (AMD EPYC, 2 cores): a fixed prior (`dcg_epochs`)"
CPU4 = (
    "CPU session 4 of 2026-11-27 (Intel Xeon, 2 cores): the y0 recipe, accuracy against K, the denoiser's learning rate"
)
TE = "train_evaluate.py --samples 1 10 --splits validation test --no-tsne"
VARIANTS_CPU = "crossfit_variants_cpu"  # y0_crossfit5 (study 10) and y0_crossfit_medmnist (study 12), BreastMNIST
APTOS_CPU = "aptos_crossfit_cpu"  # study 13: y0, y0_crossfit and basic on APTOS 2019
SOURCES = {
    "speed_h200.csv": Source("", "bash benchmarks/gpu_session.sh (speed.py)", GPU1),
    "ablation_h200.csv": Source("2026-11-26", "bash benchmarks/gpu_ablation.sh, collect.py --name ablation_h200", GPU2),
    "study_h100.csv": Source("2026-11-26", "bash benchmarks/gpu_ablation.sh, collect.py --name study_h100", GPU3),
    "speed_cpu.csv": Source("", "speed.py --device cpu --out benchmarks/results/speed_cpu.csv", CPU1),
    "paper_datasets_cpu.csv": Source("2026-11-26", "train_evaluate.py, collect.py --name paper_datasets_cpu", CPU2),
    "fixed_prior_cpu.csv": Source("2026-11-27", f"{TE} --set dcg_epochs=N, collect.py --name fixed_prior_cpu", CPU3),
    "small_y0_cpu.csv": Source("2026-11-27", f"{TE} --setting y0, collect.py --name small_y0_cpu", CPU4),
    "sampling_steps_y0_cpu.csv": Source("2026-11-27", "sampling_steps.py --runs runs/cpu_y0_small/*_seed0", CPU4),
    "learning_rate_cpu.csv": Source("2026-11-27", f"{TE} --set lr_denoiser=0.0003, collect.py", CPU4),
    "diffusion_study_cpu.csv": Source("2026-12-01", f"{TE} --set ..., collect.py --name diffusion_study_cpu"),
    "diagnostics_cpu.csv": Source("2026-12-01", "diagnostics.py --runs runs/cpu_*/*_seed0"),
    "audit_study_cpu.csv": Source("2026-12-02", f"{TE} --setting S, collect.py --name audit_study_cpu"),
    "crossfit_retinamnist_cpu.csv": Source(
        "2026-12-02", f"{TE} --datasets retinamnist --setting y0_crossfit, collect.py --name crossfit_retinamnist_cpu"
    ),
    "diagnostics_crossfit_cpu.csv": Source(
        "2026-12-02",
        "diagnostics.py --runs runs/cpu_y0_crossfit_sN/retinamnist_small_full_y0_crossfit_seedN --splits train ...",
    ),
    "diagnostics_audit_cpu.csv": Source(
        "2026-12-02", "diagnostics.py --runs runs/cpu_S/D_small_full_S_seedN --splits train validation test"
    ),
    "test_selection_cpu.csv": Source("2026-12-01", "test_selection.py --datasets D --seeds 0"),
    "basic_cpu.csv": Source(
        "2026-12-02",
        "train_evaluate.py --samples 1 --splits validation test --no-tsne --variant basic --setting basic, collect.py",
    ),
    f"{VARIANTS_CPU}.csv": Source(
        "2026-12-02", f"{TE} --datasets breastmnist --setting y0_crossfit5 | y0_crossfit_medmnist, collect.py"
    ),
    f"diagnostics_{VARIANTS_CPU}.csv": Source(
        "2026-12-02", "diagnostics.py --runs runs/cpu_S/breastmnist_small_full_S_seed0 --splits train validation test"
    ),
    "medmnist_schedule_cpu.csv": Source(
        "2026-12-01",
        f"{TE} --setting basic_medmnist --variant basic | y0_medmnist, collect.py --name medmnist_schedule_cpu",
    ),
    f"{APTOS_CPU}.csv": Source(
        "2026-12-02",
        f"{TE} --datasets aptos2019 --setting y0 | y0_crossfit | basic --set max_epochs=12 ..., collect.py",
    ),
    "diagnostics_aptos_cpu.csv": Source(
        "2026-12-02", "diagnostics.py --runs runs/cpu_aptos/aptos2019_small_full_S_seed0 --splits train validation test"
    ),
}


class Table(NamedTuple):
    """A marked table or a figure under the docs' ``images/``: the CSVs of its builder's arguments (a tuple: their
    rows concatenated), and the builder (a figure's is given its rows and the PNG's path)."""

    csvs: tuple[str | tuple[str, ...], ...]
    build: Callable[..., str | None]


def table(*csvs: str | tuple[str, ...], build: Callable[..., str | None], **options: object) -> Table:
    return Table(csvs, functools.partial(build, **options))


class Section(NamedTuple):
    """One ``## `` section of a page under ``bundle/docs``: its tables, and its figures by file name."""

    page: str
    heading: str
    tables: dict[str, Table]
    figures: dict[str, Table] = {}


Y0 = ("ablation_h200.csv", "study_h100.csv")  # basic of the H200 ablation, the y0 recipe's runs on the H100
Y0_PREDICTIONS = ("ablation_h200_predictions.csv.gz", "study_h100_predictions.csv.gz")
Y0_CPU, Y0_CPU_CURVES = "small_y0_cpu.csv", "small_y0_cpu_curves.csv"
PAGE, STEPS_Y0 = "benchmarks.md", "sampling_steps_y0_cpu.csv"
STUDY = functools.partial(table, build=study_table, with_device=True)
SCHEDULE, SCHEDULE_PREDICTIONS = "medmnist_schedule_cpu.csv", "medmnist_schedule_cpu_predictions.csv.gz"
SCHEDULE_CURVES = "medmnist_schedule_cpu_curves.csv"
CROSSFIT_PREDICTIONS = ("audit_study_cpu_predictions.csv.gz", "crossfit_retinamnist_cpu_predictions.csv.gz")
# Xeon (studies 5-8), AMD (study 9), AMD (studies 10 and 12)
AUDIT_DIAGNOSTICS = (
    "diagnostics_audit_cpu.csv",
    "diagnostics_crossfit_cpu.csv",
    "diagnostics_crossfit_variants_cpu.csv",
)
MAP = [  # the pages' sections in page order, each with its tables and figures and their CSVs
    Section(
        PAGE,
        "Does the diffusion help?",
        {
            "diffusion_study_cpu": STUDY(
                (Y0_CPU, "diffusion_study_cpu.csv"),
                (Y0_CPU_CURVES, "diffusion_study_cpu_curves.csv"),
                settings=DIFFUSION_STUDY_SETTINGS,
            ),
            "diagnostics_cpu": table("diagnostics_cpu.csv", build=diagnostics_table),
            "medmnist_schedule_cpu": table(SCHEDULE, SCHEDULE_PREDICTIONS, build=medmnist_schedule_table),
            "second_view_cpu": table(SCHEDULE_PREDICTIONS, build=second_view_table),
            "ranking_cpu": table(SCHEDULE, build=ranking_table),
            "audit_study_cpu": STUDY("audit_study_cpu.csv", "audit_study_cpu_curves.csv", auc="auc_label_mean"),
            "diagnostics_audit_cpu": table(AUDIT_DIAGNOSTICS, build=diagnostics_table),
            "in_sample_cpu": table(AUDIT_DIAGNOSTICS, build=in_sample_table),
            "crossfit_seeds_cpu": table(
                "audit_study_cpu_predictions.csv.gz",
                "diagnostics_audit_cpu.csv",
                build=denoised_vs_prior_table,
                setting="y0_crossfit",
                dataset="breastmnist",
            ),
            "crossfit_seeds_retinamnist_cpu": table(
                "crossfit_retinamnist_cpu_predictions.csv.gz",
                "diagnostics_crossfit_cpu.csv",
                build=denoised_vs_prior_table,
                setting="y0_crossfit",
                dataset="retinamnist",
            ),
            "epoch_mean_cpu": table(
                (
                    "audit_study_cpu_curves.csv",
                    "crossfit_retinamnist_cpu_curves.csv",
                    SCHEDULE_CURVES,
                    f"{VARIANTS_CPU}_curves.csv",
                ),
                build=epoch_mean_table,
            ),
            "basic_crossfit_cpu": table(
                (*CROSSFIT_PREDICTIONS, "basic_cpu_predictions.csv.gz", SCHEDULE_PREDICTIONS),
                build=denoised_vs_basic_table,
                setting="y0_crossfit",
                basic_settings=("basic", "basic_medmnist"),
            ),
            "crossfit_variants_cpu": STUDY(
                (SCHEDULE, f"{VARIANTS_CPU}.csv"),
                (SCHEDULE_CURVES, f"{VARIANTS_CPU}_curves.csv"),
                settings=("y0_medmnist", "y0_crossfit_medmnist", "y0_crossfit5"),
                auc="auc_label_mean",
            ),
            "crossfit_medmnist_basic_cpu": table(
                (SCHEDULE_PREDICTIONS, f"{VARIANTS_CPU}_predictions.csv.gz"),
                build=denoised_vs_basic_table,
                setting="y0_crossfit_medmnist",
                basic_settings=("basic_medmnist",),
            ),
            "aptos_crossfit_cpu": STUDY(
                f"{APTOS_CPU}.csv",
                f"{APTOS_CPU}_curves.csv",
                settings=("y0", "y0_crossfit"),
                auc="auc_label_mean",
                datasets=("aptos2019",),
            ),
            "diagnostics_aptos_cpu": table("diagnostics_aptos_cpu.csv", build=diagnostics_table),
            "in_sample_aptos_cpu": table("diagnostics_aptos_cpu.csv", build=in_sample_table),
            "epoch_mean_aptos_cpu": table(f"{APTOS_CPU}_curves.csv", build=epoch_mean_table),
            "aptos_crossfit_basic_cpu": table(
                f"{APTOS_CPU}_predictions.csv.gz",
                build=denoised_vs_basic_table,
                setting="y0_crossfit",
                basic_settings=("basic",),
                datasets=("aptos2019",),
            ),
            "test_selection_cpu": table("test_selection_cpu.csv", build=test_selection_table),
        },
        {
            "prior_vs_denoised_epochs_crossfit.png": table(
                ("audit_study_cpu_curves.csv", "crossfit_retinamnist_cpu_curves.csv"),
                build=draw_curves,
                settings=("y0_crossfit",),
            )
        },
    ),
    Section(
        PAGE,
        "Accuracy against baselines and the paper",
        {
            "ablation_y0": table(Y0, Y0_PREDICTIONS, build=ablation_table, setting="y0"),
            "published": table(Y0, build=published_table),
            "paper_datasets_cpu": table(
                *(f"paper_datasets_cpu{end}" for end in (".csv", "_predictions.csv.gz", "_curves.csv")),
                build=paper_datasets_table,
            ),
        },
        {"prior_vs_denoised_epochs_y0.png": table("study_h100_curves.csv", build=draw_curves, settings=("y0",))},
    ),
    Section(
        PAGE,
        "Uncertainty and calibration",
        {
            "uncertainty_cpu": table(SCHEDULE_PREDICTIONS, build=uncertainty_table),
            "uncertainty_crossfit_cpu": table(CROSSFIT_PREDICTIONS, build=uncertainty_table, settings=("y0_crossfit",)),
            "uncertainty_aptos_cpu": table(f"{APTOS_CPU}_predictions.csv.gz", build=uncertainty_table),
            "evaluation_y0_cpu": table(Y0_CPU, build=evaluation_table, setting="y0"),
        },
        {"risk_coverage.png": table(SCHEDULE_PREDICTIONS, build=draw_risk_coverage)},
    ),
    Section(
        PAGE,
        "Speed and memory",
        {name: table(f"{name}.csv", build=speed_table) for name in ("speed_h200", "speed_cpu")},
    ),
    Section(
        PAGE,
        "Accuracy against the number of reverse steps",
        {
            "sampling_steps_y0_cpu": table(STEPS_Y0, build=sampling_steps_table, setting="y0"),
            "smallest_k_y0_cpu": table(STEPS_Y0, build=smallest_agreeing_k_table, setting="y0"),
        },
        {"accuracy_vs_steps_y0.png": table(STEPS_Y0, build=draw_sampling_steps, setting="y0")},
    ),
    Section(
        PAGE,
        "Settings tried on the validation split",
        {
            "study_h100": table("study_h100.csv", "study_h100_curves.csv", build=study_table),
            "seeds": table(Y0, build=seeds_table),
            "fixed_prior_cpu": STUDY(
                ("study_h100.csv", "fixed_prior_cpu.csv"),
                ("study_h100_curves.csv", "fixed_prior_cpu_curves.csv"),
                settings=("y0", *FIXED_PRIOR_SETTINGS),
            ),
            "learning_rate_cpu": STUDY(
                (Y0_CPU, "learning_rate_cpu.csv"), (Y0_CPU_CURVES, "learning_rate_cpu_curves.csv"), settings=LR_SETTINGS
            ),
        },
        {
            "prior_vs_denoised_epochs_fixed_prior.png": table(
                "fixed_prior_cpu_curves.csv", build=draw_curves, settings=FIXED_PRIOR_SETTINGS
            ),
            "prior_vs_denoised_epochs_lr.png": table(
                (Y0_CPU_CURVES, "learning_rate_cpu_curves.csv"), build=draw_curves, settings=LR_SETTINGS
            ),
        },
    ),
    Section(
        "README.md",
        "Performance",
        {
            "small_recipe_cpu": table(Y0_CPU, "small_y0_cpu_predictions.csv.gz", build=small_recipe_table),
            "headline": table(Y0, build=headline_table),
        },
    ),
    # the log's tables are frozen copies; its figures are redrawn with the page's
    Section(HISTORY, GPU2, {}, {"prior_vs_denoised_epochs.png": table("ablation_h200_curves.csv", build=draw_curves)}),
    Section(HISTORY, CPU1, {}, {"accuracy_vs_steps.png": table("sampling_steps_cpu.csv", build=draw_sampling_steps)}),
]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def provenance(table: Table, page: str, load: Callable[[str], list[dict[str, str]]]) -> str:
    """Machine, date, code and command of each metric CSV of a table (a per-image or curves CSV: its metrics')."""
    flat = [n for csvs in table.csvs for n in (csvs if isinstance(csvs, tuple) else (csvs,))]
    parts = []
    for name in dict.fromkeys(re.sub(r"_(predictions|curves)\.csv(\.gz)?$", ".csv", n) for n in flat):
        rows, source = load(name), SOURCES[name]
        devices = ", ".join(dict.fromkeys(r["device"] for r in rows))
        dates = ", ".join(dict.fromkeys(r["date"][:10] for r in rows)) if "date" in rows[0] else source.date
        commits = ", ".join(dict.fromkeys(r["commit"] for r in rows))
        log = f", [commands]({'' if page == HISTORY else HISTORY}#{anchor(source.log)})" if source.log else ""
        parts.append(f"`{name}`: {devices}, {dates}, code {commits}, `{source.command}`{log}")
    return "Provenance: " + "; ".join(parts) + "."


def fill(page: str, text: str, sections: Sequence[Section], load: Callable[..., list[dict[str, str]]]) -> str:
    """The page with each table of its sections rebuilt; a table outside its section or a stray marker fails."""
    mapped = {name for section in sections for name in section.tables}
    stray = set(re.findall(r"<!-- table:(\w+) -->", text)) - mapped
    if stray:
        raise ValueError(f"{page}: tables not in report.py's MAP: {sorted(stray)}")
    for section in sections:
        start = text.find(f"\n## {section.heading}\n")
        if start < 0:
            raise ValueError(f"{page} has no section '## {section.heading}'")
        end = text.find("\n## ", start + 1)
        end = len(text) if end < 0 else end
        body = text[start:end]
        for name, table in section.tables.items():
            pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:(?!<!--).)*?(<!-- end -->)", re.S)
            if not pattern.search(body):
                raise ValueError(f"{page}: no '<!-- table:{name} -->' ... '<!-- end -->' under '## {section.heading}'")
            built = table.build(*[load(n) for n in table.csvs]) + "\n\n" + provenance(table, page, load)
            body = pattern.sub(lambda m, t=built: m.group(1) + t + "\n" + m.group(2), body)
        missing = [name for name in section.figures if f"images/{name}" not in body]
        if missing:
            raise ValueError(f"{page}: '## {section.heading}' does not show {missing}")
        text = text[:start] + body + text[end:]
    return text


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = script_parser(__doc__)
    parser.add_argument("--docs", type=Path, default=DOCS, help="the folder of the pages; figures in its images/")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    cache: dict[str, list[dict[str, str]]] = {}

    def load(csv_names: str | tuple[str, ...]) -> list[dict[str, str]]:
        if isinstance(csv_names, tuple):
            return [row for name in csv_names for row in load(name)]
        if csv_names not in cache:
            cache[csv_names] = read_rows(args.results / csv_names)
        return cache[csv_names]

    pages = {}
    for page in dict.fromkeys(section.page for section in MAP):
        path = args.docs / page
        pages[page] = fill(page, path.read_text(), [s for s in MAP if s.page == page], load)
        write(path, pages[page])
    for section in MAP:
        for name, figure in section.figures.items():
            figure.build(*[load(n) for n in figure.csvs], args.docs / "images" / name)
    return pages


if __name__ == "__main__":
    main()
