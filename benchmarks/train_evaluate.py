"""Trains DiffMIC on datasets of the bundle and evaluates each model on the test split with 1 and 10 samples.

For every dataset and seed: `run training` (the small CPU recipe, configs/small.yaml, or the paper's,
train.yaml alone; skipped when the model exists; optionally stopped after a time budget), then
`run evaluating` on the test split once per sample count, and `run tsne` once. Every run is the bundle's
own workflow, in-process; this script only chooses datasets, seeds, sample counts and output folders.
``--setting NAME`` names the runs' settings and merges the overrides of ``benchmarks/settings/NAME.yaml``.
One CSV row per evaluation is appended to ``<out>/results.csv`` as it finishes; rows already there are
skipped, so an interrupted run resumes.

    python benchmarks/train_evaluate.py --datasets breastmnist retinamnist --samples 1 10
    python benchmarks/train_evaluate.py --recipe paper --datasets ham10000 --train-seconds 300
    python benchmarks/train_evaluate.py --datasets ham10000 --configs configs/data/ham10000_lesion_split.yaml \
        --setting lesion_split
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402 - beside this script
    BUNDLE,
    RESULTS,
    RUN_CONFIG,
    append_row,
    in_bundle_folder,
    override_text,
    parse_override,
    recipe_configs,
    recorded_keys,
    row_stamp,
    run_folder,
    script_parser,
    setting_overrides,
)

# --tiny: 1 DCG warm-up epoch and 1 joint epoch of depth-10 trunks and a 32-wide denoiser
TINY = {
    "max_epochs": 2,
    "warmup_epochs": 1,
    "lr_warmup_epochs": 0,
    "width": 32,
    "encoder_depth": 10,
    "global_depth": 10,
    "local_depth": 10,
    "dcg_pretrained": None,  # ImageNet weights exist for ResNet-18 and -50, not the tiny depth-10 trunks
    "tsne_max_images": 40,
}
KEY = ("dataset", "recipe", "setting", "seed", "variant", "num_samples", "split")  # one evaluation
FIELDS = ["dataset", "recipe", "setting", "overrides", "epochs", "seed", "variant", "num_samples", "split"]
FIELDS += ["accuracy", "macro_f1", "balanced_accuracy", "auc", "kappa", "ece", "vote_accuracy", "entropy_error_auroc"]
FIELDS += ["accuracy_at_50", "accuracy_at_80", "accuracy_at_90", "auc_tied_pairs", "auc_label_mean", "auc_then_prior"]
FIELDS += ["disagreement_error_auroc", "prior_entropy_error_auroc", "prior_accuracy", "prior_macro_f1", "prior_auc"]
FIELDS += ["prior_kappa", "prior_ece", "prior_global_accuracy", "prior_local_accuracy", "train_seconds"]
FIELDS += ["eval_seconds", "commit", "device"]


def bundle_run(run_id: str, configs: list[str], time_limit: float | None = None, **overrides) -> tuple[float, int]:
    """Runs one workflow of the bundle in-process, as ``python -m monai.bundle run`` does; ``time_limit``: for
    ``training``, seconds after which the trainer stops at the end of an iteration. Returns the wall time in
    seconds and, for ``training``, the epochs completed (0 otherwise)."""
    from ignite.engine import Events
    from ignite.handlers import TimeLimit
    from monai.bundle import ConfigWorkflow

    start = time.perf_counter()
    with in_bundle_folder():
        workflow = ConfigWorkflow(
            config_file=configs, workflow_type=None, run_id=run_id, logging_file="configs/logging.conf", **overrides
        )
        workflow.initialize()
        trainer = workflow.parser.get_parsed_content("train#trainer") if run_id == "training" else None
        if trainer is not None and time_limit:
            trainer.add_event_handler(Events.ITERATION_COMPLETED, TimeLimit(int(time_limit)))
        workflow.run()
        workflow.finalize()
    if trainer is None:
        return time.perf_counter() - start, 0
    # completed epochs: a time limit stops the trainer inside an epoch, which state.epoch already counts
    return time.perf_counter() - start, trainer.state.iteration // trainer.state.epoch_length


def metrics_row(report: dict) -> dict:
    d, prior = report["denoised"], report["prior"]
    entropy = d["uncertainty"]["entropy"]
    nan = float("nan")  # kappa of nominal classes, and the priors a variant lacks (basic has none, C1 no local)
    keys = ("accuracy", "macro_f1", "balanced_accuracy", "auc", "kappa", "ece", "vote_accuracy")
    row = {k: d.get(k, nan) for k in keys}
    row["entropy_error_auroc"] = entropy["error_auroc"]
    row.update({f"accuracy_at_{int(float(c) * 100)}": v for c, v in entropy["accuracy_at_coverage"].items()})
    fused = prior.get("fused", {})
    row.update({f"prior_{k}": fused.get(k, nan) for k in ("accuracy", "macro_f1", "auc", "kappa", "ece")})
    ranking = d.get("ranking", {})  # evaluations before the ranking block: none
    # auc stays the clipped probabilities' in every CSV; metrics.json's auc ranks by the label mean since study 4
    row["auc"] = ranking.get("probabilities", {}).get("auc", row["auc"])
    row["auc_tied_pairs"] = ranking.get("probabilities", {}).get("tied_pairs", nan)
    row["auc_label_mean"] = ranking.get("label_mean", {}).get("auc", nan)
    row["auc_then_prior"] = ranking.get("probabilities_then_prior", {}).get("auc", nan)
    disagreement = d["uncertainty"].get("disagreement") or {}  # one sample: no disagreement
    row["disagreement_error_auroc"] = disagreement.get("error_auroc", nan)
    row["prior_entropy_error_auroc"] = fused.get("uncertainty", {}).get("entropy", {}).get("error_auroc", nan)
    row["prior_global_accuracy"] = prior.get("global", {}).get("accuracy", nan)
    row["prior_local_accuracy"] = prior.get("local", {}).get("accuracy", nan)
    return row


def run_overrides(args: argparse.Namespace) -> tuple[dict, str]:
    """The config overrides of every run and their record in the ``overrides`` column.

    Later sources win: --tiny's, then the setting's file (benchmarks/settings/<setting>.yaml), then --set. The
    column lists --configs, the file's overrides as ``ID=VALUE`` (unless --set repeats one) and --set: the
    same text as when the setting's overrides were given by --set, so rows recorded before the files still match.
    """
    from_file = setting_overrides(args.setting)
    overrides = {**(TINY if args.tiny else {}), **from_file, **dict(parse_override(t) for t in args.set)}
    texts = [override_text(k, v) for k, v in from_file.items()]
    return overrides, " ".join(args.configs + [t for t in texts if t not in args.set] + args.set)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = script_parser(__doc__, "--datasets", "--seeds", "--recipe", "--set")
    parser.add_argument("--variant", default="full")
    parser.add_argument("--train-seconds", type=int, help="stop each training after this many seconds")
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 10], help="num_samples of each evaluation")
    parser.add_argument(
        "--splits", nargs="+", default=["test"], help="splits evaluated (validation: for choosing settings)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "train_evaluate")
    parser.add_argument(
        "--configs", nargs="+", default=[], help="config files merged after the recipe (relative to bundle/)"
    )
    parser.add_argument(
        "--setting",
        default="default",
        help="name of the run's settings, in folders and rows: benchmarks/settings/NAME.yaml's overrides where it "
        "exists, with --set and --configs",
    )
    parser.add_argument("--no-tsne", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 2 epochs of a tiny network, 40 t-SNE images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overrides, overrides_text = run_overrides(args)
    sys.path.insert(0, str(BUNDLE))
    out, table = args.out.resolve(), args.out.resolve() / "results.csv"
    done, stamp = recorded_keys(table, KEY, missing="default"), row_stamp()
    for dataset in args.datasets:
        train_configs = recipe_configs(dataset, args.recipe) + args.configs
        for seed in args.seeds:
            run_dir = out / run_folder(dataset, args.recipe, args.variant, args.setting, seed)
            common = dict(overrides, seed=seed, variant=args.variant, model_dir=str(run_dir / "models"))
            marker = run_dir / "trained.json"  # written once training has finished: a killed run trains again
            if not marker.is_file():
                run_dir.mkdir(parents=True, exist_ok=True)  # what scripts that rebuild the network read back
                (run_dir / RUN_CONFIG).write_text(json.dumps({"configs": train_configs, "overrides": overrides}))
                seconds, epochs = bundle_run(  # resume: a killed training continues from its latest checkpoint
                    "training", train_configs, args.train_seconds, output_dir=str(run_dir / "tb"), resume=True, **common
                )
                marker.write_text(json.dumps({"train_seconds": round(seconds), "epochs": epochs}))
                print(f"{dataset} seed {seed}: trained {epochs} epochs in {seconds:.0f} s", flush=True)
            train = json.loads(marker.read_text())
            if not (run_dir / "models" / "model.pt").is_file():  # stopped before any validated joint epoch
                print(f"{dataset} seed {seed}: no model.pt after {train['epochs']} epochs, nothing to evaluate")
                continue
            for split, samples in itertools.product(args.splits, args.samples):
                row = dict(dataset=dataset, recipe=args.recipe, setting=args.setting, overrides=overrides_text)
                row.update(seed=seed, variant=args.variant, num_samples=samples, split=split)
                if tuple(str(row[k]) for k in KEY) in done:
                    continue
                eval_dir = run_dir / f"{split}_samples{samples}"
                seconds, _ = bundle_run(
                    "evaluating",
                    [*train_configs, "configs/evaluate.yaml"],
                    output_dir=str(eval_dir),
                    num_samples=samples,
                    eval_split=split,
                    **common,
                )
                metrics = metrics_row(json.loads((eval_dir / "metrics.json").read_text()))
                row.update(eval_seconds=round(seconds, 1), **train, **stamp, **metrics)
                append_row(table, row, FIELDS)
                print(f"{dataset} seed {seed} {split} samples {samples}: {json.dumps(metrics)}", flush=True)
            tsne = not args.no_tsne and args.variant != "basic"  # basic has no reverse chain to draw
            if tsne and not (run_dir / "tsne" / "tsne.png").is_file():
                bundle_run(
                    "tsne", [*train_configs, "configs/evaluate.yaml"], output_dir=str(run_dir / "tsne"), **common
                )


if __name__ == "__main__":
    main()
