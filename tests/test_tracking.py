"""Experiment tracking: `monai.bundle run --tracking configs/mlflow.yaml` records hyperparameters and metrics."""

import re

import pytest
from monai.bundle import ConfigParser

from conftest import BUNDLE, TINY, bundle_configs, require_data, train_workflow

mlflow = pytest.importorskip("mlflow", reason="mlflow is in requirements.txt; install it to test tracking")


def train_yaml_hyperparameters() -> list[str]:
    """The ids of train.yaml's hyperparameters section, in order."""
    text = (BUNDLE / "configs" / "train.yaml").read_text()
    section = text.split("# ---------------------------------------------------------------- hyperparameters")[1]
    section = section.split("# ---------------------------------------------------------------- paths")[0]
    return re.findall(r"^([a-z_0-9]+):", section, flags=re.M)


def test_mlflow_settings_track_every_hyperparameter_of_train_yaml():
    settings = ConfigParser.load_config_files(str(BUNDLE / "configs" / "mlflow.yaml"))
    tracked = settings["configs"]["tracked_hyperparameters"]
    names = train_yaml_hyperparameters()
    assert len(names) > 40 and set(names) <= set(tracked)
    assert all(tracked[n] == f"@{n}" for n in names)


def test_training_with_mlflow_tracking_records_hyperparameters_and_validation_metrics(tmp_path, monkeypatch):
    require_data("medmnist/breastmnist.npz")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here; nothing to report anyway
    overrides = dict(TINY, max_epochs=1, warmup_epochs=0, width=32, progress_bar=False)
    tracking = str(BUNDLE / "configs" / "mlflow.yaml")
    train_workflow(bundle_configs("train", "data/breastmnist", "small"), tmp_path, tracking=tracking, **overrides)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("diffmic")
    (run,) = client.search_runs([experiment.experiment_id])
    params, metrics = run.data.params, run.data.metrics
    assert params["variant"] == "full" and params["width"] == "32" and params["image_size"] == "28"
    assert params["class_names"] == "['malignant', 'normal_or_benign']" and params["key_metric_name"] == "macro_f1"
    assert set(train_yaml_hyperparameters()) <= set(params)
    assert 0.0 <= metrics["macro_f1"] <= 1.0 and 0.0 <= metrics["prior_macro_f1"] <= 1.0  # the key metric, both
    assert {"loss", "loss_ce", "loss_noise", "loss_mmd"} <= set(metrics)
    history = client.get_metric_history(run.info.run_id, "macro_f1")
    assert [m.step for m in history] == [1]  # validated once, at epoch 1
