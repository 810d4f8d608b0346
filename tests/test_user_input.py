"""What a user types is checked before any work, through the command line as users type it (Python Fire hands
`--overwrite false` to the config as the string 'false'), and nothing a user types destroys a result."""

import json
import os
import socket
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.optimizers import WarmupCosineSchedule
from PIL import Image

from conftest import BUNDLE, TINY, require_data
from scripts.checkpoint import AtomicDiskSaver, resume_training
from scripts.data import folder_datalist, read_datalist
from scripts.folder_lock import LOCK_NAME, FolderInUseError, FolderLock
from scripts.options import OPTIONS, ConfigError, _none_from_command_line, as_bool

TRAINING = ["configs/train.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]
INFERENCE = ["configs/inference.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]
SUMMARY = "Error (the cause above, in short):"


def cli(run_id: str, configs: list[str], *args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run RUN_ID --config_file [...] ARGS`` from the bundle folder, as a user types it."""
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(configs), *args]
    env = dict(os.environ, DIFFMIC_DATA_DIR=str(require_data("medmnist/breastmnist.npz")))
    return subprocess.run(command, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)


def last_error(done: subprocess.CompletedProcess) -> str:
    """The short cause printed after the traceback: the run must have failed, and said why last."""
    assert done.returncode != 0, done.stdout[-2000:]
    assert SUMMARY in done.stderr, done.stderr[-3000:]
    return done.stderr[done.stderr.rindex(SUMMARY) :]


def tiny(tmp_path) -> list[str]:
    args = [a for key, value in TINY.items() for a in (f"--{key}", str(value))]
    return [*args, "--model_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")]


def test_every_problem_on_the_command_line_is_listed_in_one_error_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    done = cli(
        "training",
        TRAINING,
        *("--max_epoch", "3", "--variant", "fulll", "--num_classes", "9", "--overwrite", "maybe"),
        *("--warmup_epochs", "40", "--batch_size", "1", "--sampler_name", "dd", "--lr_dcg", "abc"),
        *("--device", "cuda:7", "--model_dir", str(blocker / "models"), "--output_dir", str(tmp_path / "eval")),
        *("--key_metric_name", "kappa", "--prior_folds", "1"),
    )
    error = last_error(done)
    for expected in (
        "ConfigError: 12 problem(s) in the configuration",
        "prior_folds: 1 fold would leave its DCG copy no image to train on; use 0 (off) or 2 or more",
        "key_metric_name kappa (quadratic weighted) needs ordered grades: set --ordinal true",
        "nothing was read or written",
        "max_epoch: no config defines or reads this id, so it would change nothing: did you mean --max_epochs?",
        "variant: 'fulll' is not one of ['basic', 'C1', 'C2', 'full'] (did you mean 'full'?)",
        "num_classes: 9 does not match the 2 class_names ['malignant', 'normal_or_benign']",
        "overwrite: 'maybe' is not true or false",
        "max_epochs (30) must exceed warmup_epochs (40)",
        "batch_size: training needs at least 2 images per batch",
        "sampler_name: 'dd' is not one of",
        "lr_dcg: 'abc' is not a float",
        "device: cuda:7",
        f"model_dir: {blocker / 'models'} cannot be created: {blocker} is a file, not a folder",
    ):
        assert expected in error, (expected, error)
    assert not (tmp_path / "eval").exists()


def test_false_means_false_and_a_training_is_never_replaced_by_accident(tmp_path):
    """`--overwrite false` used to delete model.pt (the string 'false' is true); `--resume no` used to resume."""
    models = tmp_path / "models"
    models.mkdir()
    torch.save({"w": torch.ones(1)}, models / "model.pt")
    torch.save({"trainer": {}}, models / "latest_checkpoint_epoch=4.pt")
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    done = cli(
        "training",
        TRAINING,
        *tiny(tmp_path),
        "--overwrite",
        "false",
        "--resume",
        "no",
        "--amp",
        "TRUE",
        "--device",
        "cpu",
    )
    error = last_error(done)
    assert "FileExistsError" in error and "already holds a training" in error
    assert {p.name: p.read_bytes() for p in models.glob("*.pt")} == before
    assert not (models / LOCK_NAME).exists()  # released when the process ended


def test_values_convert_to_their_types_and_none_is_kept():
    falsy, truthy = ("false", "FALSE", "No", "0", 0, "off"), ("true", "Yes", "1", 1, True)
    assert [as_bool(v) for v in falsy] == [False] * len(falsy) and all(as_bool(v) is True for v in truthy)
    with pytest.raises(ConfigError, match="'maybe' is not true or false"):
        as_bool("maybe")
    assert OPTIONS["max_epochs"].convert("max_epochs", "12") == (12, None)
    assert OPTIONS["lr_dcg"].convert("lr_dcg", "2e-4") == (2e-4, None)
    assert OPTIONS["download_md5"].convert("download_md5", "null") == (None, None)
    assert OPTIONS["device"].convert("device", "cpu") == (torch.device("cpu"), None)
    assert OPTIONS["max_epochs"].convert("max_epochs", "0")[1] == "max_epochs: 0 is outside [1, inf)"
    assert OPTIONS["seed"].convert("seed", "$@x")[1] is None  # an expression is checked once evaluated
    assert OPTIONS["dcg_loss_terms"].convert("dcg_loss_terms", "[global, fused]") == (["global", "fused"], None)
    assert "must list some of" in OPTIONS["dcg_loss_terms"].convert("dcg_loss_terms", "fusion")[1]


def test_none_on_the_command_line_is_applied(monkeypatch):
    """Fire reads `--download_md5 None` as None, which MONAI drops; the check applies it from the command line."""
    main = os.path.join("site-packages", "monai", "bundle", "__main__.py")
    monkeypatch.setattr(sys, "argv", [main, "run", "--download_md5", "None", "--resume_from=None", "--seed", "None"])
    config = {"download_md5": "750601b1f35ba3300ea97c75c52ff8f6", "resume_from": "x.pt", "seed": 0}
    assert _none_from_command_line(config)
    assert config == {"download_md5": None, "resume_from": None, "seed": 0}  # seed cannot be null: kept


def test_a_model_dir_in_use_is_refused_and_a_stale_lock_is_taken_over(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:
        owner = {"pid": other.pid, "host": socket.gethostname(), "started": "today", "command": "another training"}
        (models / LOCK_NAME).write_text(json.dumps(owner))
        done = cli("training", TRAINING, *tiny(tmp_path), "--progress_bar", "false")
        error = last_error(done)
        assert f"FolderInUseError: {models} is in use by process {other.pid}" in error and "another training" in error
        with pytest.raises(FolderInUseError):
            FolderLock(str(models)).acquire()
    finally:
        other.kill()
        other.wait()
    # its process is gone: the lock is stale, and the half-written file of the killed run goes too
    (models / f"model.pt.{other.pid}.partial").write_bytes(b"half a checkpoint")
    assert resume_training(None, {}, str(models)) is None
    assert json.loads((models / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert sorted(p.name for p in models.iterdir()) == [LOCK_NAME]
    FolderLock(str(models)).release()
    assert not (models / LOCK_NAME).exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill a disk")
def test_a_full_disk_keeps_the_last_checkpoint_and_leaves_no_partial_file(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"w": torch.ones(3)}, "latest_checkpoint_epoch=1.pt")
    saver.remove("latest_checkpoint_epoch=1.pt")
    partial = tmp_path / f"latest_checkpoint_epoch=2.pt.{os.getpid()}.partial"
    partial.symlink_to("/dev/full")  # every write to it fails with ENOSPC, as on a full disk
    with pytest.raises(OSError, match="could not write") as raised:
        saver({"w": torch.zeros(3)}, "latest_checkpoint_epoch=2.pt")
    message = str(raised.value)
    assert str(tmp_path / "latest_checkpoint_epoch=2.pt") in message and "MiB free" in message
    assert "--resume true" in message and "previous checkpoint is kept" in message
    assert not partial.is_symlink() and not partial.exists()
    assert torch.equal(torch.load(tmp_path / "latest_checkpoint_epoch=1.pt", weights_only=True)["w"], torch.ones(3))


def test_resuming_with_more_epochs_stretches_the_learning_rate_schedule(tmp_path):
    """A checkpoint holds its schedule's length; the extended run's cosine must run to the new max_epochs."""

    def state(t_total):
        weights = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.Adam([weights], lr=1e-3)
        return {"optimizer": optimizer, "lr_scheduler": WarmupCosineSchedule(optimizer, 2, t_total)}

    finished = state(10)
    for _ in range(10):
        finished["optimizer"].step()
        finished["lr_scheduler"].step()
    path = tmp_path / "models" / "latest_checkpoint_epoch=10.pt"
    path.parent.mkdir()
    torch.save({k: v.state_dict() for k, v in finished.items()}, path)

    extended = state(20)
    trainer = Engine(lambda *_: None)
    trainer.state.max_epochs = 20
    resume_training(trainer, extended, str(path.parent), resume=True)
    assert extended["lr_scheduler"].t_total == 20 and extended["lr_scheduler"].last_epoch == 10
    halfway = 1e-3 * 0.5 * (1 + np.cos(np.pi * (10 - 2) / (20 - 2)))
    assert extended["optimizer"].param_groups[0]["lr"] == pytest.approx(halfway)
    FolderLock(str(path.parent)).release()


def test_csv_with_a_byte_order_mark_and_symlinked_folders_are_read(tmp_path):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    (tmp_path / "list.csv").write_text("\ufeffimage,id\na.png,first\n", encoding="utf-8")  # Excel's UTF-8 CSV
    assert read_datalist(str(tmp_path / "list.csv")) == [{"image": str(image), "id": "first"}]

    outside, folder = tmp_path / "outside", tmp_path / "folder"
    outside.mkdir()
    (folder / "real").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(outside / "b.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "real" / "c.png")
    (folder / "linked").symlink_to(outside)
    (folder / "real" / "loop").symlink_to(folder)  # would list every file again, forever
    assert [it["id"] for it in folder_datalist(str(folder))] == ["linked/b", "real/c"]


def test_inference_checks_every_file_before_loading_the_model_and_can_skip_bad_ones(trained_bundle, tmp_path):
    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        images = arrays["test_images"][:3]
    folder, outside = tmp_path / "images", tmp_path / "outside"
    folder.mkdir()
    outside.mkdir()
    for i in range(2):
        Image.fromarray(images[i]).save(folder / f"good_{i}.png")
    Image.fromarray(images[2]).save(outside / "linked.png")
    (folder / "more").symlink_to(outside)
    nib.save(nib.Nifti1Image(np.zeros((8, 16, 12), np.uint8), np.eye(4)), folder / "volume.nii.gz")
    (folder / "not_an_image.png").write_bytes(b"plain text, named .png")
    network = [a for k in ("width", "encoder_depth", "global_depth", "local_depth") for a in (f"--{k}", str(TINY[k]))]
    args = [*network, "--model_dir", str(trained_bundle["dir"] / "models"), "--dataset_dir", str(folder)]

    done = cli("run", INFERENCE, *args, "--output_dir", str(tmp_path / "strict"))
    error = last_error(done)
    assert "2 problem(s) in the images to classify" in error
    assert "volume.nii.gz: not a 2D image: shape (1, 8, 16, 12)" in error
    assert "not_an_image.png: cannot be decoded" in error and "--on_bad_image skip" in error
    assert "Restored the network's weights" not in done.stderr + done.stdout
    assert not (tmp_path / "strict" / "predictions.csv").exists()

    out = tmp_path / "skip"
    done = cli("run", INFERENCE, *args, "--output_dir", str(out), "--on_bad_image", "skip")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is not writable" not in done.stderr  # PIL's read-only pixels are copied (WritablePILReader)
    predicted = (out / "predictions.csv").read_text().splitlines()
    assert sorted(line.split(",")[0] for line in predicted[1:]) == ["good_0", "good_1", "more/linked"]
    skipped = (out / "skipped.csv").read_text().splitlines()
    assert skipped[0] == "image,reason" and len(skipped) == 3
    assert {line.split(",")[0] for line in skipped[1:]} == {
        str(folder / "volume.nii.gz"),
        str(folder / "not_an_image.png"),
    }


def test_evaluating_without_a_trained_model_says_so_before_reading_data(tmp_path):
    done = cli("evaluating", [*TRAINING, "configs/evaluate.yaml"], *tiny(tmp_path))
    error = last_error(done)
    assert f"ckpt_path: {tmp_path / 'models' / 'model.pt'} not found; train first" in error
    assert not (tmp_path / "eval").exists()


def test_a_training_split_smaller_than_a_batch_is_refused_before_training(tmp_path):
    done = cli("training", TRAINING, *tiny(tmp_path), "--batch_size", "600")  # BreastMNIST has 546 training images
    error = last_error(done)
    assert "the training split has 546 image(s) for this process, fewer than batch_size (600)" in error
    assert not list((tmp_path / "models").glob("*.pt"))


def test_a_second_evaluation_or_inference_never_replaces_the_first_ones_results(trained_bundle, tmp_path):
    """`run` of evaluate.yaml evaluates (the model zoo's pattern), says where it wrote and what it measured; a
    second run into the same folder is refused before any work, naming the files; --overwrite true replaces them.
    """
    args = [*tiny(tmp_path), "--model_dir", str(trained_bundle["dir"] / "models")]
    done = cli("run", [*TRAINING, "configs/evaluate.yaml"], *args)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stderr + done.stdout
    assert f"Results written to {tmp_path / 'eval'}: metrics.json, predictions.csv" in log
    assert "test split, 156 images: denoised ACC" in log and "; DCG prior ACC" in log
    assert "Got new best metric" not in log and "resuming from iteration 0" not in log
    metrics = tmp_path / "eval" / "metrics.json"
    assert metrics.read_text().endswith("}\n")
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval").iterdir()}

    error = last_error(cli("evaluating", [*TRAINING, "configs/evaluate.yaml"], *args))
    assert f"output_dir {tmp_path / 'eval'} holds the results of an earlier run: metrics.json (" in error
    assert "Nothing was run" in error and "--overwrite true" in error
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "eval").iterdir()} == first

    done = cli("evaluating", [*TRAINING, "configs/evaluate.yaml"], *args, "--overwrite", "true")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--overwrite true: replacing the earlier results" in done.stderr + done.stdout
    assert metrics.stat().st_mtime_ns > first["metrics.json"]

    (tmp_path / "images").mkdir()
    Image.fromarray(np.full((28, 28), 80, np.uint8)).save(tmp_path / "images" / "one.png")
    (tmp_path / "eval" / "skipped.csv").write_text("image,reason\n")
    error = last_error(cli("run", INFERENCE, *args, "--dataset_dir", str(tmp_path / "images")))
    assert "holds the results of an earlier run: predictions.csv (" in error and "skipped.csv (" in error
