"""Training with torchrun on 2 CPU processes (gloo), as configs/multi_gpu_train.yaml runs it on GPUs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import BUNDLE, TINY, require_data

# one joint epoch (no DCG warm-up) so that it is validated and selected
OVERRIDES = dict(TINY, max_epochs=1, warmup_epochs=0, width=32, progress_bar="false")
CONFIGS = ["configs/train.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]
METRICS = ["accuracy", "macro_f1", "balanced_accuracy", "auc"]  # no kappa: BreastMNIST's classes are nominal


def validation_scalars(log_dir: Path) -> tuple[dict[str, float], set[str]]:
    """The validation metrics TensorBoard recorded at epoch 1, and the process ids that wrote event files."""
    values, writers = {}, set()
    for path in log_dir.glob("events.out.tfevents.*"):
        writers.add(path.name.split(".")[-2])  # events.out.tfevents.<time>.<host>.<pid>.<n>
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            values[tag] = events.Scalars(tag)[0].value
    return values, writers


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    data_dir = require_data("medmnist/breastmnist.npz")
    out = tmp_path_factory.mktemp("torchrun")
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    args += ["-m", "monai.bundle", "run", "training", "--config_file", str([*CONFIGS, "configs/multi_gpu_train.yaml"])]
    args += ["--model_dir", str(out / "models"), "--output_dir", str(out / "eval")]
    args += [arg for k, v in OVERRIDES.items() for arg in (f"--{k}", str(v))]
    env = dict(os.environ, DIFFMIC_DATA_DIR=str(data_dir), OMP_NUM_THREADS="1")
    done = subprocess.run(args, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-6000:]
    return {"dir": out, "stdout": done.stdout, "data_dir": data_dir}


def test_both_ranks_train_and_rank_0_alone_writes(distributed_run):
    out, stdout = distributed_run["dir"], distributed_run["stdout"]
    # 546 training images: 273 per process, 8 full batches of 32 each
    assert "rank 0 of 2: 1 epochs, 8 iterations" in stdout and "rank 1 of 2: 1 epochs, 8 iterations" in stdout
    assert sorted(p.name for p in (out / "models").iterdir()) == ["latest_checkpoint_epoch=1.pt", "model.pt"]
    _, writers = validation_scalars(out / "eval")
    assert len(writers) == 1  # TensorBoard events from one process only


def test_distributed_validation_equals_a_single_process_evaluation(distributed_run, tmp_path):
    """The metrics the 2 processes computed on their halves of the validation split (no padding) equal those of
    one process evaluating the saved model.pt on the whole split."""
    out = distributed_run["dir"]
    distributed, _ = validation_scalars(out / "eval")
    cwd = os.getcwd()
    os.chdir(BUNDLE)
    try:
        workflow = ConfigWorkflow(
            config_file=[*CONFIGS, "configs/evaluate.yaml"],
            workflow_type=None,
            run_id="evaluating",
            data_root=str(distributed_run["data_dir"]),
            model_dir=str(out / "models"),
            output_dir=str(tmp_path),
            eval_split="validation",
            **{k: v for k, v in OVERRIDES.items() if k != "progress_bar"},
        )
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    finally:
        os.chdir(cwd)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["num_images"] == 78  # BreastMNIST's validation split, every image once
    for name in METRICS:  # TensorBoard stores float32
        assert distributed[name] == pytest.approx(report["denoised"][name], abs=1e-6), name
        assert distributed[f"prior_{name}"] == pytest.approx(report["prior"]["fused"][name], abs=1e-6), name
