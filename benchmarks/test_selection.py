"""How much does choosing the epoch by test accuracy inflate the test accuracy? (issue 16)

The authors' released DiffMIC code evaluates the test split after every epoch and keeps the epoch of the best
test accuracy; the bundle selects ``model.pt`` by the key metric of the validation split and evaluates the test
split once. This script trains the small recipe (as ``train_evaluate.py`` does) and, after every joint epoch,
evaluates both splits with the network as validation sees it (EMA weights, the bundle's ``validate#inferer``:
S=1 reverse sample, noise seeded per image): the validation numbers are the bundle's own evaluator's, the test
numbers a second evaluator built from the same config with the test datalist. One row per (epoch, split) is
appended to ``--out`` as it is measured; recorded rows, and runs whose training has finished, are skipped.

``--summarize`` then compares, per dataset and seed, the test accuracy at the epoch each rule selects:

* validation key metric (the bundle: ``key_metric_name`` of the dataset overlay, macro_f1 for BreastMNIST,
  kappa for RetinaMNIST), validation accuracy (the same metric as the authors, on the right split), and
* test accuracy (the authors' protocol); the difference is the inflation.

Ties go to the earliest epoch, as in the bundle: MONAI's ``CheckpointSaver`` (``key_metric_greater_or_equal``
false, as train.yaml leaves it) replaces ``model.pt`` only on a strictly greater score, ignite's ``Checkpoint``
saves the first epoch unconditionally, and the evaluator's ``best_metric`` uses ``>`` too; the authors' code
keeps its best test accuracy with ``>`` as well. A NaN score never wins (comparisons with NaN are false).
Each rule is applied to the denoised prediction and to the DCG's fused prior, with the epochs chosen by the
denoised prediction's metrics (the one ``model.pt`` the bundle saves) and by the prior's own.

    python benchmarks/test_selection.py --datasets breastmnist retinamnist --seeds 0
    python benchmarks/test_selection.py --summarize
    python benchmarks/test_selection.py --tiny --datasets breastmnist --out /tmp/ts.csv   # smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 - beside this script
    BUNDLE,
    RESULTS,
    append_row,
    in_bundle_folder,
    markdown_table,
    number,
    parse_override,
    read_rows,
    recipe_configs,
    recorded_keys,
    row_stamp,
    script_parser,
    write_csv,
)
from train_evaluate import TINY  # noqa: E402 - the same smoke-run network

KEY = ("dataset", "seed", "epoch", "split")
METRICS = ("accuracy", "macro_f1", "auc", "kappa", "balanced_accuracy")
FIELDS = ["dataset", "recipe", "seed", "epoch", "split", "key_metric_name", *METRICS, *(f"prior_{m}" for m in METRICS)]
FIELDS += ["commit", "device"]
SUMMARY_FIELDS = [
    "dataset",
    "seed",
    "prediction",  # whose test accuracy: denoised | prior
    "selected_by",  # whose metrics choose the epoch: denoised | prior
    "key_metric",  # the validation key metric of that prediction (prior_kappa: the prior's kappa)
    "joint_epochs",
    "val_key_epoch",
    "val_key_test_accuracy",
    "val_accuracy_epoch",
    "val_accuracy_test_accuracy",
    "test_accuracy_epoch",
    "test_accuracy_test_accuracy",
    "inflation",  # test-selected minus validation-key-selected
    "inflation_vs_val_accuracy",  # test-selected minus validation-accuracy-selected
    "last_epoch_test_accuracy",
]


# ---------------------------------------------------------------- training with both splits evaluated per epoch


def test_evaluator_config(validate: dict) -> dict:
    """The raw ``validate`` block made into a test-split twin: its own dataset, loader, inferer and metric
    objects (an ignite metric attached to two engines would share its state), no handlers (the best-model
    saver, TensorBoard and the log are validation's), every metric computed (kappa too, for nominal classes)."""
    config = json.loads(json.dumps(validate).replace("@validate#", "@test_eval#"))  # a deep copy, renamed
    config["dataset"]["data"] = "$@datalists['test']"
    config["evaluator"]["val_handlers"] = []
    config["additional_metrics"] = "${k: v for k, v in @test_eval#metrics.items() if k != @key_metric_name}"
    return config


def split_row(metrics: dict) -> dict:
    """The recorded metrics of one evaluation; those the evaluator did not compute are NaN."""
    names = [*METRICS, *(f"prior_{m}" for m in METRICS)]
    return {m: number(float(metrics.get(m, math.nan))) for m in names}


def train_recording(
    dataset: str, seed: int, run_dir: Path, table: Path, done: set, overrides: dict, stamp: dict, recipe: str
) -> int:
    """Trains one (dataset, seed) with the bundle's workflow and appends a row per joint epoch and split; returns
    the epochs completed."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    with in_bundle_folder():
        workflow = ConfigWorkflow(
            config_file=recipe_configs(dataset, recipe),
            workflow_type=None,
            run_id="training",
            logging_file="configs/logging.conf",
            output_dir=str(run_dir / "tb"),
            model_dir=str(run_dir / "models"),
            resume=True,  # a killed run continues from its latest checkpoint; recorded epochs are not rewritten
            seed=seed,
            **overrides,
        )
        workflow.parser["test_eval"] = test_evaluator_config(workflow.parser.get("validate"))
        workflow.initialize()
        parser = workflow.parser
        trainer = parser.get_parsed_content("train#trainer")
        validator = parser.get_parsed_content("validate#evaluator")
        tester = parser.get_parsed_content("test_eval#evaluator")
        key_name = parser.get_parsed_content("key_metric_name")
        interval = parser.get_parsed_content("val_interval")

        # after JointValidationHandler (attached when the trainer was built), before the latest checkpoint
        # (attached by the `training` list): the validator's metrics are this epoch's
        def record(engine) -> None:
            epoch = engine.state.epoch
            if epoch <= engine.warmup_epochs or epoch % interval:
                return  # no validation in the DCG warm-up: the bundle never selects such an epoch
            keys = {s: (dataset, str(seed), str(epoch), s) for s in ("validation", "test")}
            if all(k in done for k in keys.values()):
                return
            tester.run(epoch)  # the test evaluation does not touch training: each epoch reseeds from (seed, epoch)
            for split, metrics in (("validation", validator.state.metrics), ("test", tester.state.metrics)):
                if keys[split] in done:
                    continue
                row = dict(
                    dataset=dataset, recipe=recipe, seed=seed, epoch=epoch, split=split, key_metric_name=key_name
                )
                append_row(table, {**row, **split_row(metrics), **stamp}, FIELDS)
                done.add(keys[split])
            val, test = validator.state.metrics, tester.state.metrics
            print(
                f"{dataset} seed {seed} epoch {epoch}: validation {key_name} {val[key_name]:.4f} accuracy"
                f" {val['accuracy']:.4f}, test accuracy {test['accuracy']:.4f} prior {test['prior_accuracy']:.4f}",
                flush=True,
            )

        trainer.add_event_handler(Events.EPOCH_COMPLETED, record)
        workflow.run()
        workflow.finalize()
    return trainer.state.epoch


# ---------------------------------------------------------------- the selection and its summary


def select_epoch(scores: list[tuple[int, float]]) -> int:
    """The epoch a best-model saver keeps: the first epoch, replaced only by a strictly greater score (ties:
    the earliest; NaN never wins), as MONAI's CheckpointSaver and the authors' ``>`` do."""
    ordered = sorted(scores)
    best_epoch, best = ordered[0]
    for epoch, score in ordered[1:]:
        if score > best or (math.isnan(best) and not math.isnan(score)):
            best_epoch, best = epoch, score
    return best_epoch


def summarize(rows: list[dict]) -> list[dict]:
    """Per dataset and seed: the test accuracy at the epochs chosen by validation (key metric, accuracy) and
    by test accuracy, for the denoised prediction and the prior, chosen by the denoised prediction's metrics
    and by the prior's own. Only epochs with both splits recorded count."""
    runs: dict[tuple[str, str], dict[str, dict[int, dict]]] = defaultdict(lambda: {"validation": {}, "test": {}})
    for r in rows:
        runs[(r["dataset"], r["seed"])][r["split"]][int(r["epoch"])] = r
    summary = []
    for (dataset, seed), splits in runs.items():
        epochs = sorted(set(splits["validation"]) & set(splits["test"]))
        if not epochs:
            continue
        val, test = splits["validation"], splits["test"]
        key_name = val[epochs[0]]["key_metric_name"]

        def chosen(split: dict, metric: str, epochs: list[int] = epochs) -> int:
            return select_epoch([(e, float(split[e][metric])) for e in epochs])

        for prediction, selected_by in (("denoised", "denoised"), ("prior", "denoised"), ("prior", "prior")):
            p = "" if prediction == "denoised" else "prior_"  # the column prefix of the accuracy reported
            s = "" if selected_by == "denoised" else "prior_"  # that of the metrics that select
            picks = {
                "val_key": chosen(val, s + key_name),
                "val_accuracy": chosen(val, s + "accuracy"),
                "test_accuracy": chosen(test, s + "accuracy"),
            }
            row = dict(dataset=dataset, seed=seed, prediction=prediction, selected_by=selected_by)
            row.update(key_metric=s + key_name, joint_epochs=len(epochs))
            acc = {rule: float(test[e][p + "accuracy"]) for rule, e in picks.items()}
            for rule, e in picks.items():
                row[f"{rule}_epoch"], row[f"{rule}_test_accuracy"] = e, number(acc[rule])
            row["inflation"] = number(acc["test_accuracy"] - acc["val_key"])
            row["inflation_vs_val_accuracy"] = number(acc["test_accuracy"] - acc["val_accuracy"])
            row["last_epoch_test_accuracy"] = test[epochs[-1]][p + "accuracy"]
            summary.append(row)
    return summary


def markdown(summary: list[dict]) -> str:
    """The summary as a markdown table: accuracies in percent, the selected epoch beside each."""
    header = ["dataset", "seed", "test accuracy of", "epoch chosen by", "validation key metric"]
    header += ["validation accuracy", "test accuracy (authors)", "inflation (pp)", "last epoch"]
    rows = []
    for r in summary:
        cells = [r["dataset"], str(r["seed"]), r["prediction"], f"{r['selected_by']} ({r['key_metric']})"]
        for rule in ("val_key", "val_accuracy", "test_accuracy"):
            cells.append(f"{100 * float(r[f'{rule}_test_accuracy']):.1f} (ep {r[f'{rule}_epoch']})")
        cells += [f"{100 * float(r['inflation']):+.1f}", f"{100 * float(r['last_epoch_test_accuracy']):.1f}"]
        rows.append(cells)
    return markdown_table(header, rows, numeric=5)


def write_summary(table: Path, summary_path: Path) -> list[dict]:
    summary = summarize(read_rows(table))
    write_csv(summary_path, summary, SUMMARY_FIELDS)  # derived from the table: rewritten whole
    print(markdown(summary))
    return summary


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__, "--datasets", "--seeds", "--recipe", "--set")
    parser.add_argument("--out", type=Path, default=RESULTS / "test_selection_cpu.csv", help="the per-epoch rows")
    parser.add_argument("--summary", type=Path, help="default: <out>_summary.csv")
    parser.add_argument("--work", type=Path, help="run folders (models, TensorBoard); default: beside --out")
    parser.add_argument("--summarize", action="store_true", help="only summarize --out (no training)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 1 warm-up and 2 joint epochs, tiny widths")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    table = args.out.resolve()
    summary_path = (args.summary or table.with_name(table.stem + "_summary.csv")).resolve()
    if not args.summarize:
        sys.path.insert(0, str(BUNDLE))
        overrides = {**(dict(TINY, max_epochs=3) if args.tiny else {}), **dict(parse_override(t) for t in args.set)}
        overrides.pop("tsne_max_images", None)
        work = (args.work or table.with_name(table.stem)).resolve()
        done, stamp = recorded_keys(table, KEY), row_stamp()
        for dataset in args.datasets:
            for seed in args.seeds:
                run_dir = work / f"{dataset}_{args.recipe}_seed{seed}"
                marker = run_dir / "trained.json"  # written once training has finished: a killed run resumes
                if marker.is_file():
                    continue
                epochs = train_recording(dataset, seed, run_dir, table, done, overrides, stamp, args.recipe)
                marker.write_text(json.dumps({"epochs": epochs}))
    return write_summary(table, summary_path)


if __name__ == "__main__":
    main()
