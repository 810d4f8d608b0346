"""Interruption and resume: atomic checkpoints, a SIGKILLed training resumed to the uninterrupted result, and
determinism (two trainings with the same config and seed give identical weights and metrics)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from monai.bundle import ConfigWorkflow
from torch.optim.lr_scheduler import MultiStepLR

from conftest import BUNDLE, TINY, bundle_configs, require_data
from scripts.checkpoint import AtomicDiskSaver, latest_checkpoint, resume_training
from scripts.folder_lock import LOCK_NAME, FolderLock

CONFIGS = ["configs/train.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]


def cli_training(tmp_path, *extra: str) -> subprocess.Popen:
    """`python -m monai.bundle run training` with the tests' tiny recipe, as a subprocess."""
    args = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(CONFIGS)]
    for key, value in TINY.items():
        args += [f"--{key}", str(value)]
    args += ["--model_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"), "--progress_bar", "false"]
    env = dict(os.environ, DIFFMIC_DATA_DIR=str(require_data("medmnist/breastmnist.npz")))
    log = open(tmp_path / f"training{len(list(tmp_path.glob('training*.log')))}.log", "w")  # noqa: SIM115
    return subprocess.Popen([*args, *extra], cwd=BUNDLE, env=env, stdout=log, stderr=subprocess.STDOUT)


def evaluate(model_dir, out) -> dict:
    """metrics.json of the test split for the model in ``model_dir`` (in-process evaluation)."""
    workflow = ConfigWorkflow(
        config_file=bundle_configs("train", "data/breastmnist", "small", "evaluate"),
        workflow_type=None,
        run_id="evaluating",
        bundle_root=str(BUNDLE),
        data_root=str(require_data()),
        model_dir=str(model_dir),
        output_dir=str(out),
        **TINY,
    )
    workflow.initialize()
    workflow.run()
    report = json.loads((out / "metrics.json").read_text())
    report.pop("checkpoint")
    return report


def test_killed_training_resumes_to_the_uninterrupted_result(trained_bundle, tmp_path):
    """SIGKILL after the first checkpoint, `--resume true`, and the run ends with the planned epochs and the
    same weights and test metrics as the uninterrupted run of the same seed (the session's trained bundle),
    exactly: on a CPU every draw is reseeded from (seed, epoch)."""
    process = cli_training(tmp_path)
    deadline = time.time() + 300
    while latest_checkpoint(str(tmp_path / "models")) is None and process.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    assert process.wait(60) == -signal.SIGKILL, (tmp_path / "training0.log").read_text()[-3000:]
    interrupted_at = latest_checkpoint(str(tmp_path / "models"))
    assert interrupted_at is not None and not interrupted_at.endswith("epoch=3.pt")

    resumed = cli_training(tmp_path, "--resume", "true")
    resumed.wait(600)
    log = (tmp_path / "training1.log").read_text()
    assert resumed.returncode == 0, log[-3000:]
    assert f"resumed from {interrupted_at}" in log
    assert "%|" not in log  # --progress_bar false: no bar
    kept = sorted(p.name for p in (tmp_path / "models").iterdir())  # the checkpoint resumed from is replaced
    assert kept == ["latest_checkpoint_epoch=3.pt", "model.pt"], kept

    reference = trained_bundle["dir"] / "models"
    for name in ("model.pt", "latest_checkpoint_epoch=3.pt"):
        ours = torch.load(tmp_path / "models" / name, weights_only=True)
        theirs = torch.load(reference / name, weights_only=True)
        state = (ours, theirs) if name == "model.pt" else (ours["network"], theirs["network"])
        assert state[0].keys() == state[1].keys()
        assert all(torch.equal(state[0][k], state[1][k]) for k in state[0]), name
    assert evaluate(tmp_path / "models", tmp_path / "ours") == evaluate(reference, tmp_path / "reference")


def test_latest_checkpoint_is_plain_tensors_with_every_state(trained_bundle):
    checkpoint = torch.load(latest_checkpoint(str(trained_bundle["dir"] / "models")), weights_only=True)
    states = {"network", "optimizer", "dcg_optimizer", "lr_scheduler", "dcg_lr_scheduler", "trainer", "selection"}
    assert set(checkpoint) == states | {"fold_guidance"} and checkpoint["fold_guidance"] == {}  # prior_folds 0
    assert checkpoint["trainer"]["iteration"] == 3 * checkpoint["trainer"]["epoch_length"] == 3 * 17  # 3 epochs
    assert any(k.startswith("ema.") for k in checkpoint["network"])  # the EMA head and its update count
    assert checkpoint["selection"]["best_metric_epoch"] in (2, 3)  # validation runs on the joint epochs only


def test_a_checkpoint_being_written_never_replaces_the_last_complete_one(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"weights": torch.ones(3)}, "latest_checkpoint_epoch=1.pt")
    saver.remove("latest_checkpoint_epoch=1.pt")  # ignite's order: forget the old file, then write the new
    with pytest.raises(Exception):  # noqa: B017 - the write dies part-way, as a killed process would
        saver({"weights": torch.ones(3), "unpicklable": lambda: None}, "latest_checkpoint_epoch=2.pt")
    kept = torch.load(tmp_path / "latest_checkpoint_epoch=1.pt", weights_only=True)
    assert torch.equal(kept["weights"], torch.ones(3))
    assert not (tmp_path / "latest_checkpoint_epoch=2.pt").exists()
    saver({"weights": torch.zeros(3)}, "latest_checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["latest_checkpoint_epoch=2.pt"]

    fixed = AtomicDiskSaver(tmp_path / "best", filename="model.pt")
    fixed({"w": torch.ones(1)}, "model_key_metric=0.5.pt")
    fixed.remove("model_key_metric=0.5.pt")
    fixed({"w": torch.zeros(1)}, "model_key_metric=0.7.pt")
    assert torch.equal(torch.load(tmp_path / "best" / "model.pt", weights_only=True)["w"], torch.zeros(1))


def test_a_new_training_does_not_write_over_an_old_one(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"w": torch.ones(1)}, models / "model.pt")
    torch.save({"trainer": {}}, models / "latest_checkpoint_epoch=4.pt")
    with pytest.raises(FileExistsError, match=r"holds a training \(latest_checkpoint_epoch=4.pt, model.pt\)"):
        resume_training(None, {}, str(models))
    assert (models / "model.pt").exists()
    assert resume_training(None, {}, str(models), overwrite=True) is None
    assert [p.name for p in models.iterdir()] == [LOCK_NAME]  # held until this process ends or releases it
    FolderLock(str(models)).release()
    with pytest.raises(FileNotFoundError, match="nothing.pt not found"):
        resume_training(None, {}, str(models), resume_from=str(models / "nothing.pt"))


def test_a_checkpoint_from_before_the_dcg_schedule_resumes_only_while_the_rate_is_constant(tmp_path):
    """Checkpoints of bundle 0.4.0 lack ``dcg_lr_scheduler``: they resume while ``dcg_lr_milestones`` is empty
    (the schedule never changes a rate), and a schedule that would is refused, naming the missing state."""
    from ignite.engine import Engine

    models = tmp_path / "models"
    models.mkdir()
    trainer = Engine(lambda engine, batch: None)
    trainer.run([0, 1], max_epochs=2)
    torch.save({"trainer": trainer.state_dict()}, models / "latest_checkpoint_epoch=2.pt")
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)

    def objects(milestones):
        return {"trainer": Engine(lambda e, b: None), "dcg_lr_scheduler": MultiStepLR(optimizer, milestones)}

    resumed = objects([])
    assert resume_training(resumed["trainer"], resumed, str(models), resume=True).endswith("epoch=2.pt")
    assert resumed["trainer"].state.epoch == 2
    FolderLock(str(models)).release()
    with pytest.raises(ValueError, match=r"lacks \['dcg_lr_scheduler'\]"):
        resume_training(Engine(lambda e, b: None), objects([50, 75]), str(models), resume=True)
