"""Collects the output folders of train_evaluate.py runs into three CSVs of benchmarks/results/.

A GPU lease (``benchmarks/gpu_ablation.sh``) leaves one train_evaluate.py folder per job; this script merges
them into ``<results>/<name>.csv`` (every metric row, one per evaluation), ``<name>_predictions.csv.gz`` (every
image of every evaluation: labels and class probabilities, for confidence intervals and paired tests) and
``<name>_curves.csv`` (the per-epoch validation metrics that training logged to TensorBoard). Each file is
written to ``<file>.partial`` and then renamed, so an interrupted run never leaves half a file::

    python benchmarks/collect.py --runs /tmp/gpu/work/job* --name ablation_h200
    python benchmarks/collect.py --runs /tmp/te --name mine --results /tmp/out --commit d7a9c8e-dirty

Metric rows come from each folder's ``results.csv`` and are deduplicated by train_evaluate.py's key (dataset,
recipe, setting, seed, variant, num_samples, split; the folder given last wins). Predictions and curves come
from the run folders ``<dataset>_<recipe>_<variant>[_<setting>]_seed<S>/``, also those of runs stopped before
any evaluation (their curves show how far training got).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, read_rows, run_fields, script_parser, write_csv  # noqa: E402 - beside this script

KEY = ("dataset", "recipe", "setting", "seed", "variant", "num_samples", "split")  # train_evaluate.py's key
EVAL_DIR = re.compile(r"^(?P<split>[a-z]+)_samples(?P<num_samples>\d+)$")
RUN_FIELDS = ["dataset", "recipe", "setting", "variant", "seed"]
PREDICTION_FIELDS = [*RUN_FIELDS, "num_samples", "split", "id", "true_label", "predicted_label", "prior_label"]
CURVE_FIELDS = [*RUN_FIELDS, "epoch", "tag", "value"]
# the trainer's per-iteration scalars (losses, learning rates); every other tag is a per-epoch validation metric
ITERATION_TAG_PREFIXES = ("loss", "lr_")
CLASS_PREFIXES = ("prob_", "prior_prob_", "label_mean_")  # the per-class columns of a predictions.csv


def run_dirs(folders: Sequence[Path]) -> list[tuple[Path, dict[str, str]]]:
    """(run folder, its ``RUN_FIELDS``) of the run folders inside train_evaluate.py ``--out`` folders, in the order
    of ``folders`` and then of the names."""
    found = []
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if p.is_dir()):
            fields = run_fields(path.name)
            if fields is not None:
                found.append((path, {k: fields[k] for k in RUN_FIELDS}))
    return found


def union_fields(rows: Iterable[dict[str, str]]) -> list[str]:
    """Every column of the rows, in order of first appearance."""
    return list(dict.fromkeys(k for r in rows for k in r))


def sort_key(row: dict[str, str], fields: Sequence[str]) -> tuple:
    """Numbers compare as numbers (seed 10 after seed 2), everything else as text."""
    return tuple((0, int(row[k]), "") if row.get(k, "").isdigit() else (1, 0, row.get(k, "")) for k in fields)


def metric_rows(folders: Sequence[Path], commit: str | None = None) -> list[dict[str, str]]:
    """The rows of every folder's ``results.csv``, one per evaluation, deduplicated by ``KEY`` (a later folder's
    row replaces an earlier one) and sorted by it. Rows of older files without a setting or split read as
    ``default`` and ``test``, as train_evaluate.py reads them. ``commit`` replaces the ``commit`` column where
    given (when the device's git metadata was stale)."""
    merged: dict[tuple[str, ...], dict[str, str]] = {}
    for folder in folders:
        path = folder / "results.csv"
        for row in read_rows(path) if path.is_file() else []:
            row = {**row, "setting": row.get("setting") or "default", "split": row.get("split") or "test"}
            if commit is not None:
                row["commit"] = commit
            merged[tuple(row[k] for k in KEY)] = row
    return sorted(merged.values(), key=lambda r: sort_key(r, KEY))


def evaluation_predictions(path: Path, run: dict[str, str], evaluation: dict[str, str]) -> list[dict[str, str]]:
    """One evaluation's ``<run>/<split>_samples<S>/predictions.csv`` with class indices instead of names: rows of
    ``PREDICTION_FIELDS`` plus ``prob_0``... (and ``prior_prob_0``..., ``vote_agreement``, ``label_mean_0``...
    where the file has them); class i is the i-th ``prob_<name>`` column of the file (the config's class order).
    """
    rows = read_rows(path)
    names = [c.removeprefix("prob_") for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    index = {name: str(i) for i, name in enumerate(names)}
    out = []
    for r in rows:
        row = {**run, **evaluation, "id": r["id"]}
        row.update({k: index[r[k]] for k in ("true_label", "predicted_label", "prior_label")})
        for prefix in CLASS_PREFIXES:  # the prior's since its probabilities, the label mean's since the ranking
            if f"{prefix}{names[0]}" in r:
                row.update({f"{prefix}{i}": r[f"{prefix}{name}"] for i, name in enumerate(names)})
        if "prior_prob_0" in row:  # recorded with the prior's probabilities
            row["vote_agreement"] = r["vote_agreement"]
        out.append(row)
    return out


def prediction_rows(runs: Sequence[tuple[Path, dict[str, str]]]) -> tuple[list[dict[str, str]], list[str]]:
    """The per-image rows of every evaluation of the ``run_dirs``, deduplicated by run, evaluation and image id
    (the last one wins) and sorted, and their columns: ``PREDICTION_FIELDS``, then ``prob_0``... up to the
    largest class count (blank for datasets with fewer), and the prior's and the label mean's where recorded."""
    merged: dict[tuple[str, ...], dict[str, str]] = {}
    for run_dir, run in runs:
        for eval_dir in sorted(run_dir.iterdir()):
            match = EVAL_DIR.match(eval_dir.name)
            if match is None or not (eval_dir / "predictions.csv").is_file():
                continue
            for row in evaluation_predictions(eval_dir / "predictions.csv", run, match.groupdict()):
                merged[tuple(row[k] for k in PREDICTION_FIELDS[:8])] = row
    classes = max((sum(k.startswith("prob_") for k in r) for r in merged.values()), default=0)
    fields = list(PREDICTION_FIELDS)
    for prefix in CLASS_PREFIXES:  # none where every evaluation predates them
        if any(f"{prefix}0" in r for r in merged.values()):
            fields += [f"{prefix}{i}" for i in range(classes)] + (["vote_agreement"] if prefix == "prior_prob_" else [])
    order = PREDICTION_FIELDS[:7]
    return sorted(merged.values(), key=lambda r: (sort_key(r, order), image_number(r["id"]))), fields


def image_number(image_id: str) -> tuple[int, str]:
    """Sorts ``retinamnist_test_10`` after ``retinamnist_test_9``."""
    digits = re.search(r"(\d+)$", image_id)
    return (int(digits.group(1)) if digits else -1, image_id)


def event_scalars(path: Path) -> list[tuple[str, int, float, float]]:
    """(tag, step, wall time, value) of every scalar event of an ``events.out.tfevents.*`` file, none dropped (no
    reservoir sampling)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"scalars": 0})
    accumulator.Reload()
    return [(t, e.step, e.wall_time, e.value) for t in accumulator.Tags()["scalars"] for e in accumulator.Scalars(t)]


def curve_rows(runs: Sequence[tuple[Path, dict[str, str]]]) -> list[dict[str, str]]:
    """The per-epoch validation metrics each run's training logged to ``<run>/tb``.

    Tags are kept as the bundle's ``TensorBoardStatsHandler`` writes them: ``accuracy``, ``auc``, ``macro_f1``...
    of the denoised prediction and ``prior_accuracy``... of the fused DCG prior, at the trainer's epoch. The
    trainer's per-iteration tags (``ITERATION_TAG_PREFIXES``) are left out. Rows of ``CURVE_FIELDS``, one per
    run, tag and epoch (a resumed run's latest value of an epoch), sorted.
    """
    latest: dict[tuple[str, ...], tuple[float, dict[str, str]]] = {}
    for run_dir, run in runs:
        for path in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
            for tag, step, wall_time, value in event_scalars(path):
                if tag.startswith(ITERATION_TAG_PREFIXES):
                    continue
                row = {**run, "epoch": str(step), "tag": tag, "value": f"{value:.7g}"}
                key = tuple(row[k] for k in CURVE_FIELDS[:-1])
                if key not in latest or wall_time >= latest[key][0]:
                    latest[key] = (wall_time, row)
    rows = [row for _, row in latest.values()]
    return sorted(rows, key=lambda r: sort_key(r, [*RUN_FIELDS, "tag", "epoch"]))


def collect(folders: Sequence[Path], name: str, results: Path, commit: str | None = None) -> dict[str, Path]:
    """Writes the three CSVs of train_evaluate.py output folders, ``<results>/<name>...``; returns their paths by
    kind (``metrics``, ``predictions``, ``curves``)."""
    runs = run_dirs(folders)
    metrics = metric_rows(folders, commit)
    predictions, prediction_fields = prediction_rows(runs)
    paths = {
        "metrics": results / f"{name}.csv",
        "predictions": results / f"{name}_predictions.csv.gz",
        "curves": results / f"{name}_curves.csv",
    }
    write_csv(paths["metrics"], metrics, union_fields(metrics))
    write_csv(paths["predictions"], predictions, prediction_fields)
    write_csv(paths["curves"], curve_rows(runs), CURVE_FIELDS)
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = script_parser(__doc__)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="train_evaluate.py output folders")
    parser.add_argument("--name", required=True, help="stem of the CSVs, e.g. ablation_h200")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the CSVs go")
    parser.add_argument("--commit", help="replaces the metric rows' commit column (when the device's was stale)")
    args = parser.parse_args(argv)
    folders = [f for f in args.runs if f.is_dir()]  # a shell glob also matches the jobs' log files
    paths = collect(folders, args.name, args.results, args.commit)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return paths


if __name__ == "__main__":
    main()
