"""Evaluation and inference of the test session's trained bundle, through the CLI as a user runs them."""

import csv
import json
import os
import subprocess
import sys

import itk
import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from conftest import BUNDLE, TINY, bundle_configs, require_data

NETWORK = {k: v for k, v in TINY.items() if k in ("width", "encoder_depth", "global_depth", "local_depth", "seed")}
CLASSIFICATION = {"accuracy", "macro_f1", "balanced_accuracy", "auc", "ece", "per_class", "confusion_matrix"}


def run_bundle(run_id: str, configs: list[str], **overrides) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run RUN_ID --config_file [...] --key value ...`` from the bundle folder."""
    args = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(configs)]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    env = dict(os.environ, DIFFMIC_DATA_DIR=str(require_data("medmnist/breastmnist.npz")))
    done = subprocess.run(args, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def read_rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def evaluation(trained_bundle, tmp_path_factory):
    """The test split evaluated with 2 samples per image and saliency maps."""
    out = tmp_path_factory.mktemp("evaluation")
    configs = ["configs/train.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml", "configs/evaluate.yaml"]
    overrides = dict(NETWORK, model_dir=trained_bundle["dir"] / "models", output_dir=out, num_samples=2)
    run_bundle("evaluating", configs, save_saliency="true", **overrides)
    return {"dir": out, "configs": configs, "overrides": overrides}


def test_evaluation_writes_every_metric_table_and_figure(evaluation, trained_bundle):
    out = evaluation["dir"]
    report = json.loads((out / "metrics.json").read_text())
    assert report["split"] == "test" and report["num_images"] == 156
    denoised = report["denoised"]
    assert CLASSIFICATION | {"vote_accuracy", "uncertainty"} <= set(denoised)
    assert set(denoised["per_class"]) == {"malignant", "normal_or_benign"}
    assert sum(c["support"] for c in denoised["per_class"].values()) == 156
    for kind in ("entropy", "disagreement"):
        assert set(denoised["uncertainty"][kind]["accuracy_at_coverage"]) == {"0.5", "0.8", "0.9"}
        assert "error_auroc" in denoised["uncertainty"][kind]
    assert set(report["prior"]) == {"fused", "global", "local"}
    assert all(CLASSIFICATION <= set(block) for block in report["prior"].values())
    assert not any("kappa" in block for block in [denoised, *report["prior"].values()])  # BreastMNIST: nominal
    assert report["checkpoint"] == str(trained_bundle["dir"] / "models" / "model.pt")
    assert report["sampler"] == {"name": "ddim", "steps": 10, "eta": 0.0}
    assert report["num_samples"] == 2 and report["seed"] == 0 and report["variant"] == "full"
    assert report["majority_baseline"]["accuracy"] == pytest.approx(114 / 156)
    assert "clip" in report["probability_rule"]

    rows = read_rows(out / "predictions.csv")
    assert len(rows) == 156 and len({r["id"] for r in rows}) == 156
    assert list(rows[0]) == [
        "id",
        "true_label",
        "predicted_label",
        "prob_malignant",
        "prob_normal_or_benign",
        "entropy",
        "vote_label",
        "vote_agreement",
        "prior_label",
        "prior_prob_malignant",
        "prior_prob_normal_or_benign",
        "label_mean_malignant",
        "label_mean_normal_or_benign",
    ]
    accuracy = np.mean([r["true_label"] == r["predicted_label"] for r in rows])
    prior = np.array([[float(r["prior_prob_malignant"]), float(r["prior_prob_normal_or_benign"])] for r in rows])
    assert np.allclose(prior.sum(1), 1.0, atol=1e-5)
    prior_labels = np.array(["malignant", "normal_or_benign"])[prior.argmax(1)]
    prior_accuracy = np.mean([r["true_label"] == label for r, label in zip(rows, prior_labels, strict=True)])
    assert prior_accuracy == pytest.approx(report["prior"]["fused"]["accuracy"])
    assert accuracy == pytest.approx(denoised["accuracy"])
    probs = np.array([[float(r["prob_malignant"]), float(r["prob_normal_or_benign"])] for r in rows])
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    for name in ("confusion_matrix.png", "calibration.png", "roc.png"):
        assert (out / name).stat().st_size > 1000
    saliency = sorted(p.name for p in (out / "saliency").iterdir())
    assert len(saliency) == 156 and saliency[0].startswith("breastmnist_test_")


def test_inference_on_a_folder_matches_evaluation_rows(evaluation, trained_bundle, tmp_path):
    """Test images written as PNG, NIfTI and DICOM files, named by their ids, get evaluation's rows."""
    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        images = arrays["test_images"][:8]
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    for i in range(5):
        Image.fromarray(images[i]).save(folder / f"breastmnist_test_{i}.png")
    # NIfTI's first axis is x (columns), so the rows-first array is stored transposed
    nib.save(nib.Nifti1Image(np.ascontiguousarray(images[5].T), np.eye(4)), folder / "breastmnist_test_5.nii.gz")
    itk.imwrite(itk.image_from_array(np.ascontiguousarray(images[6])), str(folder / "breastmnist_test_6.dcm"))
    Image.fromarray(images[7]).convert("RGB").save(folder / "nested" / "rgb.png")  # converted to grayscale
    (folder / "notes.txt").write_text("not an image")

    configs = ["configs/inference.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]
    out = tmp_path / "inference"
    overrides = dict(evaluation["overrides"], output_dir=out, dataset_dir=folder, batch_size=3)
    run_bundle("run", configs, **overrides)
    rows = {r["id"]: r for r in read_rows(out / "predictions.csv")}
    assert sorted(rows) == sorted([f"breastmnist_test_{i}" for i in range(7)] + ["nested/rgb"])
    assert "true_label" not in rows["nested/rgb"] and not (out / "metrics.json").exists()
    evaluated = {r["id"]: r for r in read_rows(evaluation["dir"] / "predictions.csv")}
    numbers = (
        "prob_",
        "entropy",
        "vote_agreement",
        "prior_prob_",
        "label_mean_",
    )  # equal up to float rounding: batches of 3 here, 32 there
    for image_id, row in rows.items():
        if image_id.startswith("breastmnist_test_"):
            expected = {k: v for k, v in evaluated[image_id].items() if k != "true_label"}
            assert row.keys() == expected.keys()
            for key, value in row.items():
                if key.startswith(numbers):
                    assert float(value) == pytest.approx(float(expected[key]), abs=1e-4), (image_id, key)
                else:
                    assert value == expected[key], (image_id, key)


def test_inference_workflow_has_every_property_and_builds_the_training_network(tmp_path):
    """check_properties() finds nothing missing; inference.yaml and train.yaml build the same network
    (defaults, and with the BreastMNIST and small-recipe overlays)."""
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(tmp_path / "one.png")
    workflow = ConfigWorkflow(
        config_file=bundle_configs("inference"),
        workflow_type="infer",
        bundle_root=str(BUNDLE),
        dataset_dir=str(tmp_path),
        output_dir=str(tmp_path / "out"),
    )
    workflow.initialize()
    assert not workflow.check_properties()
    for overlays in ([], ["data/breastmnist", "small"], ["data/retinamnist", "small"]):
        nets = []
        for first in ("train", "inference"):
            parser = ConfigParser()
            parser.read_config(bundle_configs(first, *overlays))
            parser["data_root"] = str(require_data())
            nets.append(parser.get_parsed_content("network_def"))
        train_state, infer_state = (n.state_dict() for n in nets)
        assert {k: v.shape for k, v in train_state.items()} == {k: v.shape for k, v in infer_state.items()}
        assert nets[0].scheduler.describe() == nets[1].scheduler.describe()
        assert nets[0].diffusion.prediction_type == nets[1].diffusion.prediction_type  # repr does not show it
        assert repr(nets[0]) == repr(nets[1])


def test_reverse_chain_tsne_draws_one_png(trained_bundle, tmp_path):
    """`run tsne` (the paper's Figure 2) on the first 40 test images."""
    workflow = ConfigWorkflow(
        config_file=bundle_configs("train", "data/breastmnist", "small", "evaluate"),
        workflow_type=None,
        run_id="tsne",
        bundle_root=str(BUNDLE),
        data_root=str(require_data("medmnist/breastmnist.npz")),
        model_dir=str(trained_bundle["dir"] / "models"),
        output_dir=str(tmp_path),
        tsne_max_images=40,
        tsne_panels=3,
        **NETWORK,
    )
    workflow.initialize()
    workflow.run()
    assert (tmp_path / "tsne.png").stat().st_size > 1000
    with torch.no_grad():
        from scripts.tsne import reverse_chain_states

        parser = workflow.parser
        states, labels, names = reverse_chain_states(
            parser.get_parsed_content("network"),
            parser.get_parsed_content("validate#inferer"),
            parser.get_parsed_content("validate#dataloader"),
            torch.device("cpu"),
            max_images=40,
        )
    assert len(states) == len(names) == 11 and states[0].shape == (40, 2) and labels.shape == (40,)
