"""End to end on real data: training through MONAI's bundle workflow, in-process and by the CLI."""

import csv
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from sklearn.metrics import f1_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import BUNDLE, DATA_DIR, TINY, bundle_configs, ham_subset, require_data, train_workflow


def test_training_writes_the_model_latest_checkpoint_and_tensorboard(trained_bundle):
    models = trained_bundle["dir"] / "models"
    state = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    network = trained_bundle["workflow"].parser.get_parsed_content("network_def")
    assert set(state) == set(network.state_dict())  # a flat state dict of network_def, EMA included
    assert any(k.startswith("ema.module.") for k in state)
    latest = list(models.glob("latest_checkpoint_epoch=*.pt"))
    assert [p.name for p in latest] == [f"latest_checkpoint_epoch={TINY['max_epochs']}.pt"]
    resume = torch.load(latest[0], map_location="cpu", weights_only=True)
    assert {"network", "optimizer", "dcg_optimizer", "lr_scheduler", "trainer"} <= set(resume)
    assert resume["trainer"]["iteration"] == resume["trainer"]["epoch_length"] * TINY["max_epochs"]

    tags = set()
    for events in (trained_bundle["dir"] / "eval").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"loss", "loss_ce", "loss_noise", "loss_mmd", "lr_denoiser", "macro_f1", "prior_macro_f1"} <= tags


def test_denoised_prediction_beats_the_majority_class(trained_bundle):
    workflow = trained_bundle["workflow"]
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    labels = np.array([d["label"] for d in workflow.parser.get_parsed_content("datalists")["validation"]])
    majority = np.full_like(labels, np.bincount(labels).argmax())
    baseline = f1_score(labels, majority, average="macro")
    # validation ran on the joint epochs only; its last value is the denoised prediction's
    assert evaluator.state.epoch == TINY["max_epochs"]
    assert evaluator.state.metrics["macro_f1"] > baseline
    assert evaluator.state.best_metric_epoch > TINY["warmup_epochs"]


def test_train_workflow_has_every_property(tmp_path):
    workflow = ConfigWorkflow(
        config_file=bundle_configs("train", "data/breastmnist", "small"),
        workflow_type="train",
        bundle_root=str(BUNDLE),
        output_dir=str(tmp_path / "eval"),
        model_dir=str(tmp_path / "models"),
    )
    workflow.initialize()
    assert not workflow.check_properties()


def test_ham10000_subset_class_order_splits_and_seven_way_output(tmp_path):
    data_dir = require_data("ham10000/HAM10000_metadata.csv", "ham10000/diffmic_split.csv")
    root, meta = ham_subset(tmp_path, data_dir)
    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "data/ham10000"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(root)})
    assert parser.get_parsed_content("class_names") == ["mel", "nv", "bcc", "akiec", "bkl", "df", "vasc"]
    lists = parser.get_parsed_content("datalists")
    assert len(lists["train"]) + len(lists["validation"]) == 28 and len(lists["test"]) == 12
    assert len(lists["validation"]) > 0
    order = parser.get_parsed_content("class_names")
    for item in lists["train"] + lists["validation"] + lists["test"]:
        assert order[item["label"]] == meta[item["id"]]["dx"]
    train_lesions = {meta[i["id"]]["lesion_id"] for i in lists["train"]}
    assert not train_lesions & {meta[i["id"]]["lesion_id"] for i in lists["validation"]}

    out = tmp_path / "run"
    overrides = dict(
        TINY,
        image_size=32,
        batch_size=8,
        max_epochs=1,
        warmup_epochs=0,
        num_rois=2,
        roi_size=8,
        stem={"stem_kernel": 3, "stem_stride": 2, "stem_max_pool": False},
        num_workers=0,
    )
    workflow = train_workflow(bundle_configs("train", "data/ham10000"), out, dataset_dir=str(root), **overrides)
    network = workflow.parser.get_parsed_content("network").eval()
    image = workflow.parser.get_parsed_content("validate#dataset")[0]["image"][None]
    with torch.no_grad():
        assert network(image).shape == (1, 7)
    assert (out / "models" / "model.pt").is_file()


def test_ham10000_lesion_split_keeps_every_lesion_on_one_side():
    """data/ham10000_lesion_split.yaml on the real metadata: 70/30 by lesion, stratified, the same for every seed.

    The authors' split, for contrast, has images of 938 lesions on both sides."""
    data_dir = require_data("ham10000/HAM10000_metadata.csv") / "ham10000"
    with open(data_dir / "HAM10000_metadata.csv", newline="") as f:
        lesion = {r["image_id"]: r["lesion_id"] for r in csv.DictReader(f)}

    def datalists(seed: int) -> dict[str, list]:
        parser = ConfigParser()
        parser.read_config(bundle_configs("train", "data/ham10000", "data/ham10000_lesion_split"))
        parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(data_dir), "seed": seed})
        return parser.get_parsed_content("source_datalists")  # image files are not opened

    lists = datalists(0)
    assert "problems" not in lists
    sides = {name: {lesion[i["id"]] for i in items} for name, items in lists.items()}
    assert not sides["test"] & (sides["train"] | sides["validation"]) and not sides["train"] & sides["validation"]
    sizes = {name: len(items) for name, items in lists.items()}
    assert sum(sizes.values()) == len(lesion) == 10015
    assert abs(sizes["test"] / len(lesion) - 0.3) < 0.01
    assert abs(sizes["validation"] / (sizes["train"] + sizes["validation"]) - 0.1) < 0.01
    everywhere = Counter(i["label"] for items in lists.values() for i in items)
    tested = Counter(i["label"] for i in lists["test"])
    assert all(abs(tested[c] / everywhere[c] - 0.3) < 0.05 for c in range(7)), tested  # stratified by class
    assert lists["test"][0]["source"].startswith(f"{data_dir / 'HAM10000_metadata.csv'} row ")
    other = datalists(1)  # another training seed: the same test images, another validation split
    assert [i["id"] for i in other["test"]] == [i["id"] for i in lists["test"]]
    assert [i["id"] for i in other["validation"]] != [i["id"] for i in lists["validation"]]


def test_cli_training_smoke(tmp_path):
    """`python -m monai.bundle run training` as a user types it (2 epochs, BreastMNIST, tiny recipe)."""
    data_dir = require_data("medmnist/breastmnist.npz")
    configs = "['configs/train.yaml','configs/data/breastmnist.yaml','configs/small.yaml']"
    args = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        configs,
        "--output_dir",
        str(tmp_path / "eval"),
        "--model_dir",
        str(tmp_path / "models"),
        "--max_epochs",
        "2",
        "--warmup_epochs",
        "1",
        "--lr_warmup_epochs",
        "0",
        "--width",
        "64",
        "--encoder_depth",
        "10",
        "--global_depth",
        "10",
        "--local_depth",
        "10",
        "--lr_dcg",
        "0.001",
        "--dcg_lr_milestones",
        "[1]",  # the DCG's rate x0.1 after epoch 1, as a user types the list
        "--prior_folds",
        "2",  # cross-fitted priors: two DCG copies, in the latest checkpoint and not in model.pt
    ]
    env = dict(os.environ, DIFFMIC_DATA_DIR=str(data_dir))
    done = subprocess.run(args, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    assert "Key metric: macro_f1 best value" in done.stderr + done.stdout
    latest = torch.load(tmp_path / "models" / "latest_checkpoint_epoch=2.pt", weights_only=True)
    assert latest["dcg_lr_scheduler"]["milestones"] == {1: 1}
    assert [g["lr"] for g in latest["dcg_optimizer"]["param_groups"]] == [pytest.approx(1e-4)]
    copies = {k.split(".")[1] for k in latest["fold_guidance"]}
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert copies == {"0", "1"} and not any("copies" in k for k in model)
    assert "loss_ce_folds" in done.stderr + done.stdout  # logged beside the DCG's own cross-entropy


def test_medmnist_download_is_checked_and_atomic(tmp_path):
    """The download path on a local file:// URL: a good checksum installs the file, a bad one leaves nothing."""
    from monai.apps.utils import HashCheckError

    from scripts.data import medmnist_datalists

    source = require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz"
    good = "750601b1f35ba3300ea97c75c52ff8f6"
    lists = medmnist_datalists(str(tmp_path / "ok"), "breastmnist", source.as_uri(), good)
    assert [len(lists[k]) for k in ("train", "validation", "test")] == [546, 78, 156]
    with pytest.raises(HashCheckError):
        medmnist_datalists(str(tmp_path / "bad"), "breastmnist", source.as_uri(), "0" * 32)
    assert not (tmp_path / "bad" / "breastmnist.npz").exists()


def test_class_weights_and_balanced_sampler():
    from scripts.data import class_balanced_sampler, class_weights

    items = [{"label": 0}] * 6 + [{"label": 1}] * 2
    weights = class_weights(items, 2)
    assert torch.allclose(weights, torch.tensor([0.5, 1.5]))
    many = items * 100
    drawn = [many[i]["label"] for i in class_balanced_sampler(many, 2)]
    assert abs(np.mean(drawn) - 0.5) < 0.05
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no training image"):
        class_weights(items, 3)


@pytest.mark.parametrize("variant, mmd_weight", [("C2", 0.0), ("full", 0.5)])
def test_the_diffusion_loss_is_a_config_item_the_trainer_uses(tmp_path, variant, mmd_weight):
    """train#diffusion_loss (a user may put another loss module there) reaches the trainer; C2 has no MMD."""
    require_data("medmnist/breastmnist.npz")
    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "data/breastmnist", "small"))
    parser.update({"data_root": str(DATA_DIR), "bundle_root": str(BUNDLE), "variant": variant, **TINY})
    parser.update({"output_dir": str(tmp_path / "eval"), "model_dir": str(tmp_path / "models")})
    trainer = parser.get_parsed_content("train#trainer")
    assert trainer.diffusion_loss is parser.get_parsed_content("train#diffusion_loss")
    assert trainer.diffusion_loss.mmd_weight == mmd_weight
