"""Shared fixtures: the data folder and one tiny DiffMIC bundle trained once per test session."""

from __future__ import annotations

import os
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


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory):
    """A DiffMIC bundle trained once on BreastMNIST with the tiny recipe; shared by the tests that need one."""
    require_data("medmnist/breastmnist.npz")
    out = tmp_path_factory.mktemp("breastmnist")
    workflow = train_workflow(bundle_configs("train", "data/breastmnist", "small"), out, **TINY)
    return {"dir": out, "workflow": workflow}
