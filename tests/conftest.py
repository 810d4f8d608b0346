"""Shared fixtures: the data folder and one tiny DiffMIC bundle trained once per test session."""

from __future__ import annotations

import csv
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
sys.path.insert(0, str(BUNDLE))  # the bundle's `scripts` package, as `monai.bundle run` sees it

DATA_DIR = Path(os.environ.get("DIFFMIC_DATA_DIR", REPO.parent / "shared" / "data")).resolve()

# The tiny recipe of the tests: the small recipe, narrower and shorter (1 warm-up + 2 joint epochs).
TINY = {
    "max_epochs": 3,
    "warmup_epochs": 1,
    "lr_warmup_epochs": 0,
    "width": 128,
    "encoder_depth": 10,
    "global_depth": 10,
    "local_depth": 10,
    "dcg_pretrained": None,  # no ImageNet weights for depth-10 trunks (train.yaml alone would fetch ResNet-50s)
    "seed": 0,
}


def bundle_configs(*names: str) -> list[str]:
    """Paths of bundle config files, e.g. ``bundle_configs("train", "data/breastmnist", "small")``."""
    return [str(BUNDLE / "configs" / f"{n}.yaml") for n in names]


def require_data(*relative: str) -> Path:
    """The data folder, or a skip naming the variable when a needed file is absent."""
    for rel in relative:
        if not (DATA_DIR / rel).exists():
            pytest.skip(f"{DATA_DIR / rel} not found: set DIFFMIC_DATA_DIR to the shared data folder")
    return DATA_DIR


def ham_subset(tmp_path: Path, data_dir: Path, per_class: int = 4, test: int = 12, copy: bool = False):
    """A small copy of HAM10000's layout: the first ``per_class`` training rows of every class and the
    first ``test`` test rows of the authors' split. Images are linked, or copied with ``copy=True`` (for
    tests that damage them: never write through a link into the shared data).

    Returns:
        the subset's root folder and its metadata rows by image id.
    """
    source = data_dir / "ham10000"
    root = tmp_path / "ham10000"
    (root / "images").mkdir(parents=True)
    with open(source / "HAM10000_metadata.csv", newline="") as f:
        reader = csv.DictReader(f)
        meta, fields = {r["image_id"]: r for r in reader}, reader.fieldnames
    with open(source / "diffmic_split.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    chosen, taken = [], {}
    for r in rows:
        dx = meta[r["image_id"]]["dx"]
        if r["split"] == "train" and taken.get(dx, 0) < per_class:
            taken[dx] = taken.get(dx, 0) + 1
            chosen.append(r)
    chosen += [r for r in rows if r["split"] == "test"][:test]
    for name, fieldnames, content in (
        ("diffmic_split.csv", ["image_id", "split"], chosen),
        ("HAM10000_metadata.csv", fields, [meta[r["image_id"]] for r in chosen]),
    ):
        with open(root / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames)
            writer.writeheader()
            writer.writerows(content)
    for r in chosen:
        image, target = source / "images" / f"{r['image_id']}.jpg", root / "images" / f"{r['image_id']}.jpg"
        shutil.copyfile(image, target) if copy else os.symlink(image, target)
    return root, {r["image_id"]: meta[r["image_id"]] for r in chosen}


def train_workflow(config_files: list[str], out: Path, **overrides):
    """Runs `training` in-process and returns the finished ConfigWorkflow."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_files,
        workflow_type="train",
        run_id="training",
        bundle_root=str(BUNDLE),
        data_root=str(DATA_DIR),
        output_dir=str(out / "eval"),
        model_dir=str(out / "models"),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return workflow


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")} if folder.is_dir() else {}


@pytest.fixture(scope="session", autouse=True)
def user_folders_untouched():
    """The suite writes to temporary folders only: a user's bundle/eval and bundle/models stay as they were."""
    before = {name: _listing(BUNDLE / name) for name in ("eval", "models")}
    yield
    for name, listing in before.items():
        after = _listing(BUNDLE / name)
        changed = sorted(k for k in after.keys() | listing.keys() if after.get(k) != listing.get(k))
        assert not changed, f"the tests wrote into bundle/{name}: {changed[:10]}; give them tmp_path folders"


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory):
    """A DiffMIC bundle trained once on BreastMNIST with the tiny recipe; shared by the tests that need one."""
    require_data("medmnist/breastmnist.npz")
    out = tmp_path_factory.mktemp("breastmnist")
    workflow = train_workflow(bundle_configs("train", "data/breastmnist", "small"), out, **TINY)
    return {"dir": out, "workflow": workflow}
