"""The MONAI Label app (integrations/monailabel) on the test session's trained bundle, without a server.

MONAI Label 0.8.5 imports torchvision, which does not run beside this suite's CPU build of torch 2.13.0:
CI runs this file in an environment of its own (integrations/monailabel/requirements.txt), and the main
suite skips it.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from PIL import Image

from conftest import BUNDLE, REPO, TINY, require_data

pytest.importorskip(
    "monailabel",
    reason="MONAI Label is not installed: CI runs this test in its own environment "
    "(pip install -r integrations/monailabel/requirements.txt)",
)
requests = pytest.importorskip("requests")  # MONAI Label's own dependency: the HTTP client of the server test

APP = REPO / "integrations" / "monailabel"
OVERLAYS = ["configs/data/breastmnist.yaml", "configs/small.yaml"]  # those the session's bundle was trained with
NETWORK = {k: v for k, v in TINY.items() if k in ("width", "encoder_depth", "global_depth", "local_depth", "seed")}
CLASSES = ["malignant", "normal_or_benign"]
IMAGE = 0  # index of the BreastMNIST test image served


def diffmic_task(bundle, **kwargs):
    """The app's task on ``bundle``, its class imported as MONAI Label imports it: ``lib`` of the app folder."""
    sys.path.insert(0, str(APP))
    try:
        from lib.infers import DiffMICClassification
    finally:
        sys.path.remove(str(APP))
    return DiffMICClassification(str(bundle), {}, overlays=OVERLAYS, overrides=NETWORK, **kwargs)


def bundle_inference(bundle, folder, out) -> torch.Tensor:
    """``pred`` of the bundle's own inference on the one image of ``folder``: inference.yaml's evaluator
    with the same overlays and overrides, as ``monai.bundle run --dataset_dir folder`` runs it."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "inference.yaml"), *(str(bundle / o) for o in OVERLAYS)])
    parser.update(dict(NETWORK, bundle_root=str(bundle), dataset_dir=str(folder), output_dir=str(out)))
    parser.update({"num_workers": 0, "device": "$torch.device('cpu')"})
    evaluator, items = parser.get_parsed_content("evaluator"), []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: items.extend(engine.state.output))
    evaluator.run()
    assert len(items) == 1
    return items[0]["pred"]


@pytest.fixture(scope="module")
def served(trained_bundle, tmp_path_factory):
    """A bundle folder as MONAI Label reads it (the repository's configs and scripts, the session's
    model.pt), a datastore folder holding one real BreastMNIST test image as a PNG, and the bundle's own
    inference of that image under its name and under another (the name seeds the sampling noise)."""
    root = tmp_path_factory.mktemp("monailabel")
    bundle, studies = root / "bundle", root / "studies"
    for name in ("configs", "scripts"):
        shutil.copytree(BUNDLE / name, bundle / name, ignore=shutil.ignore_patterns("__pycache__"))
    (bundle / "models").mkdir()
    shutil.copyfile(trained_bundle["dir"] / "models" / "model.pt", bundle / "models" / "model.pt")
    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        pixels = arrays["test_images"][IMAGE]
    image, renamed = studies / f"breastmnist_test_{IMAGE}.png", root / "renamed" / "another_name.png"
    expected = {}
    for path in (image, renamed):
        path.parent.mkdir()
        Image.fromarray(pixels).save(path)
        expected[path.stem] = bundle_inference(bundle, path.parent, root / "inference" / path.stem)
    return {"bundle": bundle, "studies": studies, "image": image, "expected": expected}


def check_result(result: dict, expected: torch.Tensor) -> None:
    """Every class with its probability, in class order; the predicted class is their argmax; the
    probabilities are the bundle's own."""
    assert [(p["idx"], p["label"]) for p in result["prediction"]] == list(enumerate(CLASSES))
    scores = [p["score"] for p in result["prediction"]]
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert scores == pytest.approx(expected.tolist(), abs=1e-5)
    assert result["predicted"] == result["prediction"][int(np.argmax(scores))]


def test_task_on_a_datastore_request_lists_every_class_with_the_bundles_probabilities(served):
    task = diffmic_task(served["bundle"])
    assert task.is_valid() and task.type == "classification"
    assert task.labels == {"malignant": 0, "normal_or_benign": 1}  # the overlay's classes, not metadata.json's 7
    label, result = task({"image": str(served["image"]), "device": "cpu"})
    assert label is None  # a class vector: no label file
    check_result(result, served["expected"][served["image"].stem])
    assert result["label_names"] == task.labels
    # a request may name the image as a datalist would: that name seeds the noise instead of the file's
    _, result = task({"image": str(served["image"]), "id": "another_name", "device": "cpu"})
    check_result(result, served["expected"]["another_name"])


def test_app_serves_the_bundle_on_a_datastore_image(served, monkeypatch):
    """main.py's app as ``monailabel start_server --conf ...`` builds it; the request names a datastore image."""
    from monailabel.config import settings
    from monailabel.utils.others.class_utils import get_class_of_subclass_from_file

    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)  # no file watcher thread
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)
    app_class = get_class_of_subclass_from_file("main", str(APP / "main.py"), "MONAILabelApp")
    conf = {"bundle_path": str(served["bundle"]), "overlays": ",".join(OVERLAYS), "overrides": json.dumps(NETWORK)}
    app = app_class(app_dir=str(APP), studies=str(served["studies"]), conf=conf)
    assert app.info()["models"]["diffmic"]["labels"] == {"malignant": 0, "normal_or_benign": 1}
    image_id = served["image"].stem
    assert app.datastore().list_images() == [image_id]
    response = app.infer({"model": "diffmic", "image": image_id, "device": "cpu"})
    assert response["file"] is None
    check_result(response["params"], served["expected"][image_id])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_real_server_answers_over_http_and_says_what_a_client_got_wrong(served, trained_bundle, tmp_path):
    """`monailabel start_server` as the README starts it; /infer over HTTP gives the bundle's probabilities; an
    unknown model or image is a 404, weights that are not offered a 400, and a training state is not offered."""
    bundle = tmp_path / "bundle"
    shutil.copytree(served["bundle"], bundle)
    shutil.copyfile(  # what training leaves beside model.pt: a whole training state, not loadable weights
        next((trained_bundle["dir"] / "models").glob("latest_checkpoint_epoch=*.pt")),
        bundle / "models" / "latest_checkpoint_epoch=3.pt",
    )
    port = free_port()
    command = [str(Path(sys.executable).parent / "monailabel"), "start_server", "--app", str(APP)]
    command += ["--studies", str(served["studies"]), "--port", str(port), "--conf", "bundle_path", str(bundle)]
    command += [
        "--conf",
        "overlays",
        ",".join(OVERLAYS),
        "--conf",
        "overrides",
        json.dumps(NETWORK, separators=(",", ":")),
    ]
    command += ["--conf", "preload", "true"]
    log = open(tmp_path / "server.log", "w")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # as activated
    server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                info = requests.get(f"{base}/info/", timeout=5)
                if info.status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        assert info.json()["models"]["diffmic"]["config"]["model_filename"] == ["model.pt"]
        assert "warm-up inference on a blank image took" in (tmp_path / "server.log").read_text()  # preload true

        image_id = served["image"].stem
        answer = requests.post(f"{base}/infer/diffmic", params={"image": image_id, "output": "json"}, timeout=120)
        assert answer.status_code == 200, answer.text
        check_result(answer.json(), served["expected"][image_id])

        answer = requests.post(f"{base}/infer/nomodel", params={"image": image_id, "output": "json"}, timeout=60)
        assert answer.status_code == 404 and "this app serves ['diffmic']" in answer.json()["detail"]
        answer = requests.post(f"{base}/infer/diffmic", params={"image": "no_such", "output": "json"}, timeout=60)
        assert answer.status_code == 404 and "no image 'no_such' in the datastore" in answer.json()["detail"]
        params = {"model_filename": "latest_checkpoint_epoch=3.pt"}
        answer = requests.post(
            f"{base}/infer/diffmic",
            params={"image": image_id, "output": "json"},
            data={"params": json.dumps(params)},
            timeout=60,
        )
        assert answer.status_code == 400 and "not one of the loadable weights ['model.pt']" in answer.json()["detail"]
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()
