"""What the denoiser adds to its prior: counterfactual inputs, and what a second view of rho(x) could add at best.

For each trained run (a ``train_evaluate.py`` folder, as ``sampling_steps.py`` reads them), the DCG and the
encoder run once per image of each split (``--splits``: validation and test; with ``train``, the training images
through the evaluation transforms: the priors the denoiser learnt from, in-sample); then, with the config's
reverse chain and the noise evaluation uses (seeded per image id, S = 1):

- ``denoised``: the prediction as evaluation makes it;
- ``prior_mean_chain``: the deterministic chain from the prior mean (the initial draw set to 0);
- ``features_swapped``: each image's rho(x) replaced by the next image's (its own prior kept): the labels
  that change are those rho(x) decides;
- ``uniform_prior``: the prior replaced by the uniform one (rho(x) kept): what rho(x) alone leads to;
- ``prior``: the fused DCG prior's argmax;
- ``prior_out_of_fold`` and ``prior_latest`` (training images of a ``prior_folds`` run only): each image's fused
  prior from the DCG copy that did not train on it (the latest checkpoint's copies: the priors cross-fitting
  conditions on), and the in-sample one of the DCG of the same checkpoint, to compare them at one epoch.

Each row has the accuracy and macro AUC, the mean probability of the predicted class (``confidence``: a prior
surer on the training images than on the others is one the denoiser learns to copy), and the shares of labels
that differ from ``denoised`` and from the prior's. On the test
split, two logistic regressions fitted on the validation split bound what a linear read-out can add:
``stacker_prior`` on log prior alone (a recalibration) and ``stacker_prior_features`` on [log prior, rho(x)]
(standardised, L2 strength by 5-fold cross-validation of the log loss). The gap between the two is what
rho(x) carries that the prior lacks, as far as a linear model on the validation images can find it.

    python benchmarks/diagnostics.py --runs runs/cpu_y0_small/breastmnist_small_full_y0_seed0 --out diag.csv
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "bundle"), str(Path(__file__).resolve().parent)]
from common import RESULTS, append_row, as_stored, parse_override, recorded_keys, row_stamp, script_parser  # noqa: E402
from sampling_steps import Run, backbone_outputs, load_parser, sample_probabilities  # noqa: E402

SPLITS = ("validation", "test")
MEASURES = ("denoised", "prior_mean_chain", "features_swapped", "uniform_prior", "prior")
STACKERS = ("stacker_prior", "stacker_prior_features")
COLUMNS = ["dataset", "recipe", "variant", "setting", "seed", "run", "split", "images", "measure"]
COLUMNS += ["accuracy", "auc", "changed_vs_denoised", "changed_vs_prior", "commit", "device", "confidence"]


def counterfactuals(network, inferer, outputs: dict) -> dict[str, torch.Tensor]:
    """Class probabilities of every measure but the stackers, on one split's backbone outputs."""
    uniform = torch.full_like(outputs["prior"], 1.0 / outputs["prior"].shape[1])
    swapped = dict(outputs, features=outputs["features"].roll(1, dims=0))
    return {
        "denoised": sample_probabilities(network, inferer, outputs, "noise"),
        "prior_mean_chain": sample_probabilities(network, inferer, outputs, "prior_mean"),
        "features_swapped": sample_probabilities(network, inferer, swapped, "noise"),
        "uniform_prior": sample_probabilities(network, inferer, dict(outputs, prior=uniform), "noise"),
        "prior": outputs["prior"],
    }


@torch.no_grad()
def latest_epoch_priors(run: Run, parser, network, device: torch.device) -> dict[str, torch.Tensor]:
    """The training images' fused priors at the epoch of a cross-fitted run's latest checkpoint, the one that keeps
    the DCG copies (``prior_folds``): ``prior_out_of_fold``, each image's from the copy that did not train on it,
    and ``prior_latest``, the in-sample one of that epoch's own DCG (``model.pt``, and so ``prior``, holds the
    best epoch's, which may be another). Empty for a run without copies."""
    from scripts.crossfit import FoldGuidance

    latest = sorted(run.path.glob("models/latest_checkpoint_epoch=*.pt"), key=lambda p: p.stat().st_mtime)
    state = torch.load(latest[-1], map_location=device, weights_only=True) if latest else {}
    if not state.get("fold_guidance"):
        return {}
    folds = len({key.split(".")[1] for key in state["fold_guidance"] if key.startswith("copies.")})
    guidance = FoldGuidance(network.dcg, folds, parser.get_parsed_content("datalists")["train"], run.seed)
    guidance.load_state_dict(state["fold_guidance"])
    dcg = copy.deepcopy(network.dcg)
    dcg.load_state_dict({k.removeprefix("dcg."): v for k, v in state["network"].items() if k.startswith("dcg.")})
    guidance.to(device)
    dcg.to(device).eval()
    out_of_fold, latest_dcg = [], []
    for batch in parser.get_parsed_content("validate#dataloader"):
        images = batch["image"].to(device)
        folds_of = guidance.folds([str(i) for i in batch["id"]], device)
        out_of_fold.append(guidance.priors(images, folds_of, lambda model, x: model(x))["fused"])
        latest_dcg.append(torch.softmax(dcg(images)["fused"], dim=1))
    return {"prior_out_of_fold": torch.cat(out_of_fold), "prior_latest": torch.cat(latest_dcg)}


def stackers(fit: dict, test: dict, seed: int) -> dict[str, torch.Tensor]:
    """Test-split class probabilities of the two logistic read-outs fitted on ``fit`` (the validation split)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def inputs(outputs: dict, with_features: bool) -> np.ndarray:
        log_prior = outputs["prior"].clamp_min(1e-8).log().cpu().numpy()
        return np.hstack([log_prior, outputs["features"].cpu().numpy()]) if with_features else log_prior

    probs = {}
    for name, with_features in zip(STACKERS, (False, True), strict=True):
        read_out = LogisticRegressionCV(
            Cs=10, cv=5, l1_ratios=(0.0,), scoring="neg_log_loss", max_iter=2000, random_state=seed,
            use_legacy_attributes=False,
        )  # fmt: skip
        model = make_pipeline(StandardScaler(), read_out)
        model.fit(inputs(fit, with_features), fit["labels"].numpy())
        probs[name] = torch.as_tensor(model.predict_proba(inputs(test, with_features)), dtype=torch.float32)
    return probs


def measure_run(
    run: Run, overrides: dict, device: torch.device, stamp: dict, splits: Sequence[str] = SPLITS
) -> list[dict]:
    """Every row of one run: the counterfactuals on each split, the stackers on test (fitted on validation)."""
    from scripts import metrics

    rows, outputs, network = [], {}, None
    for split in splits:
        parser = load_parser(run, split, overrides)
        if network is None:  # one network for both splits: only the data differ
            network = run.network(parser, device)
        inferer = parser.get_parsed_content("validate#inferer")
        inferer.num_samples = 1
        with torch.no_grad():
            outputs[split] = backbone_outputs(network, parser.get_parsed_content("validate#dataloader"), device)
            probs = counterfactuals(network, inferer, outputs[split])
        if split == "train":
            probs.update(latest_epoch_priors(run, parser, network, device))
        if split == "test" and "validation" in outputs:
            probs.update(stackers(outputs["validation"], outputs["test"], run.seed))
        labels, denoised = outputs[split]["labels"], probs["denoised"].argmax(1).cpu()
        prior = outputs[split]["prior"].argmax(1).cpu()
        for measure, p in probs.items():
            p = p.cpu()
            row = dict(run.columns(), split=split, images=len(labels), measure=measure, **stamp)
            row.update(accuracy=metrics.accuracy(p, labels), auc=metrics.macro_auc(p, labels))
            row["confidence"] = float(p.max(1).values.mean())
            row["changed_vs_denoised"] = float((p.argmax(1) != denoised).float().mean())
            row["changed_vs_prior"] = float((p.argmax(1) != prior).float().mean())
            rows.append(as_stored(row))
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = script_parser(__doc__, "--runs", "--set")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "diagnostics.csv")
    parser.add_argument(
        "--splits",
        nargs="+",
        choices=("train", *SPLITS),
        default=list(SPLITS),
        help="splits measured; train: the in-sample priors the denoiser learnt from (and a cross-fitted run's "
        "out-of-fold ones)",
    )
    args = parser.parse_args(argv)
    overrides = dict(parse_override(text) for text in args.set)
    stamp, written = row_stamp(), []
    done = {run for (run,) in recorded_keys(args.out, ("run",))}
    for path in args.runs:
        run = Run(path.resolve())
        if run.name in done:  # a run's rows are appended together once it is measured
            continue
        rows = measure_run(run, overrides, torch.device(args.device), stamp, args.splits)
        for row in rows:
            append_row(args.out, row, COLUMNS)
            print(f"{run.name} {row['split']} {row['measure']}: ACC {row['accuracy']} AUC {row['auc']} "
                  f"changed {row['changed_vs_denoised']}", flush=True)  # fmt: skip
        written += rows
    return written


if __name__ == "__main__":
    main()
