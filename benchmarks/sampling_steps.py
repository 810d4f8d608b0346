"""Accuracy against the number of reverse steps K, and which K agrees with the full chain.

For each trained run (a ``train_evaluate.py`` folder ``<dataset>_<recipe>_<variant>[_<setting>]_seed<S>/``
with ``models/model.pt``), the network is built from the bundle's configs of that dataset and recipe and
its checkpoint loaded; the DCG and the encoder run once per image of each split, then every sampler
setting samples the same images with the noise evaluation uses (``DiffMICInferer``: seeded per image id):

- DDIM with K strided steps (``--steps``, default 1 2 5 10 20 50 100 and T, the full chain), from
  N(prior, I) with S = 1 and 10 samples per image (``--samples``), and deterministically from the prior
  mean (``start = prior_mean``: the initial draw set to 0, one sample);
- DDPM: ancestral steps through all T timesteps (``--ddpm``), S as above.

One CSV row per (run, split, sampler, K, S, start) is appended to ``--out`` as it finishes, with ACC,
macro-F1 and AUC of the mean probabilities, the prior's, the agreement of the predicted labels with the
full chain's (DDIM, K = T, same S and start: same initial draws), and the sampling seconds (backbones
excluded). Rows already in the file are skipped, so an interrupted run resumes.

    python benchmarks/sampling_steps.py --runs /tmp/te/breastmnist_small_full_seed0 --splits validation test
    python benchmarks/sampling_steps.py --runs /tmp/te/breastmnist_small_full_seed0 --tiny   # smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "bundle"), str(Path(__file__).resolve().parent)]
from common import (  # noqa: E402 - beside this script
    BUNDLE,
    RESULTS,
    append_row,
    as_stored,
    parse_override,
    recorded_keys,
    row_stamp,
    run_config,
    run_fields,
    script_parser,
)

STEPS = (1, 2, 5, 10, 20, 50, 100)  # and T, the full chain
TINY_STEPS = (1, 2, 5)  # and T
RUN_FIELDS = ("dataset", "recipe", "variant", "setting")  # what a row says of its run, and its seed and folder
KEY = ("run", "split", "sampler", "steps", "samples", "start")
COLUMNS = ["dataset", "recipe", "variant", "setting", "seed", "run", "split", "images", "sampler", "steps", "samples"]
COLUMNS += ["start", "accuracy", "macro_f1", "auc", "agreement_full_chain", "prior_accuracy", "prior_macro_f1"]
COLUMNS += ["prior_auc", "sample_seconds", "backbone_seconds", "commit", "device"]


class Run:
    """A trained ``train_evaluate.py`` run, identified by its folder name.

    Args:
        path: the run folder (``<dataset>_<recipe>_<variant>[_<setting>]_seed<S>``), holding ``models/model.pt``.
    """

    def __init__(self, path: Path) -> None:
        fields = run_fields(path.name)
        if fields is None or fields["variant"] == "basic":  # basic has no reverse chain
            raise ValueError(f"{path}: not a train_evaluate.py run folder (<dataset>_<recipe>_<variant>_seed<S>)")
        self.path, self.name, self.seed = path, path.name, int(fields["seed"])
        self.dataset, self.recipe, self.variant, self.setting = (fields[k] for k in RUN_FIELDS)
        self.checkpoint = path / "models" / "model.pt"
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"{path}: no models/model.pt (training unfinished or failed?)")

    def columns(self) -> dict[str, object]:
        """What a row says of its run."""
        return {k: getattr(self, k) for k in RUN_FIELDS} | {"seed": self.seed, "run": self.name}

    def network(self, parser, device: torch.device) -> torch.nn.Module:
        """The network of ``parser``'s config with this run's trained weights, on ``device``, in eval mode."""
        from scripts.checkpoint import load_weights

        return load_weights(parser.get_parsed_content("network_def").to(device), str(self.checkpoint), device).eval()


def load_parser(run: Run, split: str, overrides: dict):
    """The evaluation config of ``run`` on ``split``, parsed from the bundle folder (where ``scripts`` imports): the
    configs and overrides the run was trained with (:func:`common.run_config`), evaluate.yaml, then ``overrides``."""
    from monai.bundle import ConfigParser

    trained = run_config(run.path)
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / c) for c in [*trained["configs"], "configs/evaluate.yaml"]])
    parser.update(trained["overrides"])
    parser.update({"bundle_root": str(BUNDLE), "seed": run.seed, "variant": run.variant, "eval_split": split})
    parser.update(overrides)
    return parser


@torch.no_grad()
def backbone_outputs(network, dataloader, device: torch.device) -> dict:
    """Fused prior, rho(x), labels and ids of every image, from one pass of the DCG and the encoder."""
    priors, features, labels, ids = [], [], [], []
    for batch in dataloader:
        images = batch["image"].to(device)
        priors.append(network.prior(images))
        features.append(network.features(images))
        labels.append(torch.as_tensor(batch["label"]).reshape(-1).long())
        ids += [str(i) for i in batch["id"]]
    return {"prior": torch.cat(priors), "features": torch.cat(features), "labels": torch.cat(labels), "ids": ids}


@torch.no_grad()
def sample_probabilities(network, inferer, outputs: dict, start: str, chunk: int = 512) -> torch.Tensor:
    """Mean class probabilities of ``inferer.num_samples`` chains per image with the network's scheduler.

    Args:
        start: ``noise`` (from N(prior, I), the per-image draws evaluation uses) or ``prior_mean``
            (every draw 0: the chain starts at the prior and, with eta = 0, is deterministic).
    """
    from scripts.uncertainty import summarize_samples

    probs = []
    for first in range(0, len(outputs["ids"]), chunk):
        ids = outputs["ids"][first : first + chunk]
        prior = outputs["prior"][first : first + chunk]
        noise = inferer.noise(ids, network.chain_noise_draws(), network.num_classes, prior.device)
        if start == "prior_mean":
            noise = torch.zeros_like(noise)
        denoised, _ = network.sample(outputs["features"][first : first + chunk], prior, noise)
        probs.append(summarize_samples(denoised)["probs"])
    return torch.cat(probs)


def settings(steps: Sequence[int], samples: Sequence[int], ddpm: bool, total: int) -> list[tuple[str, int, int, str]]:
    """(sampler, K, S, start) of every row; the full chain (DDIM, K = T) first within each (S, start) group."""
    ks = [total] + [k for k in steps if k != total]
    rows = [("ddim", k, s, "noise") for s in samples for k in ks]
    rows += [("ddim", k, 1, "prior_mean") for k in ks]
    rows += [("ddpm", total, s, "noise") for s in samples] if ddpm else []
    return rows


def measure_run(run: Run, split: str, args: argparse.Namespace, done: set, stamp: dict) -> list[dict]:
    """Every missing row of one run and split; returns the rows written."""
    from scripts import metrics
    from scripts.inferer import DiffMICInferer

    parser = load_parser(run, split, args.overrides)
    total = int(parser["num_train_timesteps"])
    wanted = settings(args.steps, args.samples, args.ddpm, total)
    missing = {(s, start) for name, k, s, start in wanted if (run.name, split, name, str(k), str(s), start) not in done}
    if not missing:  # (S, start) groups with a row to write: each needs its full chain as reference
        return []
    device = torch.device(args.device)
    network = run.network(parser, device)
    begin = time.perf_counter()
    outputs = backbone_outputs(network, parser.get_parsed_content("validate#dataloader"), device)
    backbone_seconds = time.perf_counter() - begin
    labels, prior = outputs["labels"], outputs["prior"].cpu()
    scores = {"accuracy": metrics.accuracy, "macro_f1": metrics.macro_f1, "auc": metrics.macro_auc}
    prior_scores = {f"prior_{metric}": score(prior, labels) for metric, score in scores.items()}
    full_chain: dict[tuple[int, str], torch.Tensor] = {}  # predicted labels of DDIM K = T, per (S, start)
    written = []
    for name, k, s, start in wanted:
        key = (run.name, split, name, str(k), str(s), start)
        is_full = name == "ddim" and k == total
        if key in done and not (is_full and (s, start) in missing):  # the full chain: reference of its group
            continue
        network.set_scheduler(name, k, eta=0.0)
        inferer = DiffMICInferer(seed=int(parser["seed"]), num_samples=s)  # evaluation's per-image noise
        begin = time.perf_counter()
        probs = sample_probabilities(network, inferer, outputs, start).cpu()
        seconds = time.perf_counter() - begin
        predicted = probs.argmax(1)
        if is_full:
            full_chain[(s, start)] = predicted
        if key in done:  # the full chain was recomputed only as the reference of missing rows
            continue
        reference = full_chain.get((s, start))
        row = dict(run.columns(), split=split, images=len(labels), sampler=name, steps=k, samples=s, start=start)
        row.update({metric: score(probs, labels) for metric, score in scores.items()}, **prior_scores, **stamp)
        row["agreement_full_chain"] = float((predicted == reference).float().mean()) if reference is not None else ""
        row.update(sample_seconds=round(seconds, 3), backbone_seconds=round(backbone_seconds, 3))
        row = as_stored(row)
        append_row(args.out, row, COLUMNS)
        done.add(key)
        written.append(row)
        print(f"{run.name} {split} {name} K={k} S={s} {start}: ACC {row['accuracy']}, agreement "
              f"{row['agreement_full_chain']}, {seconds:.1f} s", flush=True)  # fmt: skip
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = script_parser(__doc__, "--runs", "--set")
    parser.add_argument("--splits", nargs="+", default=["test"])
    parser.add_argument("--steps", nargs="+", type=int, help=f"DDIM steps besides T (default {STEPS})")
    parser.add_argument("--samples", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--no-ddpm", dest="ddpm", action="store_false", help="skip the T-step ancestral chain")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS / "sampling_steps.csv")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: K in 1 2 5 and T, S=1 and 2, no DDPM")
    args = parser.parse_args(argv)
    args.overrides = dict(parse_override(text) for text in args.set)
    if args.tiny:
        args.steps, args.samples, args.ddpm = args.steps or TINY_STEPS, [1, 2], False
    args.steps = args.steps or STEPS
    return args


def main(argv: Sequence[str] | None = None) -> list[dict]:
    args = parse_args(argv)

    runs = [Run(path.resolve()) for path in args.runs]
    done, stamp, written = recorded_keys(args.out, KEY), row_stamp(), []
    for run in runs:
        for split in args.splits:
            written += measure_run(run, split, args, done, stamp)
    return written


if __name__ == "__main__":
    main()
