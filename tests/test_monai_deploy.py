"""The MONAI Deploy application (integrations/monai_deploy) run as a user runs it, on the test session's
trained bundle exported to model.ts, against the bundle's own inference on the same images.

The MONAI Deploy App SDK (holoscan, tritonclient: about 3.5 GB) is not in requirements.txt: CI runs this file
in an environment of its own (requirements.txt plus integrations/monai_deploy/requirements.txt), and the main
suite skips it.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from ignite.engine import Events
from monai.bundle import ConfigParser
from PIL import Image

from conftest import BUNDLE, REPO, TINY, require_data

pytest.importorskip(
    "monai.deploy",
    reason="the MONAI Deploy App SDK is not installed: CI runs this test in its own environment "
    "(pip install -r requirements.txt -r integrations/monai_deploy/requirements.txt)",
)
pydicom = pytest.importorskip("pydicom")

APP = REPO / "integrations" / "monai_deploy" / "app.py"
CONFIGS = ["configs/inference.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]
NETWORK = {k: v for k, v in TINY.items() if k in ("width", "encoder_depth", "global_depth", "local_depth")}
CLASSES = ["malignant", "normal_or_benign"]
PNGS = 6  # the first BreastMNIST test images, written as PNG
DICOM_IMAGE = PNGS  # the next one, written as DICOM
SOP_INSTANCE_UID = pydicom.uid.generate_uid(entropy_srcs=["diffmic monai deploy test"])


def write_dicom(path, pixels: np.ndarray) -> None:
    """A single-frame 8-bit grayscale DICOM (secondary capture) of ``pixels``, SOP Instance UID fixed."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = SOP_INSTANCE_UID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, SOP_INSTANCE_UID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=["diffmic study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=["diffmic series"])
    ds.Modality, ds.PatientID, ds.InstanceNumber = "US", "diffmic-test", 1
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    ds.save_as(path, enforce_file_format=True)


def bundle_inference(folder, out, checkpoint) -> dict[str, dict]:
    """The bundle's own inference on ``folder`` (inference.yaml's evaluator with the model's overlays and
    sizes, as ``monai.bundle run --dataset_dir folder`` runs it): per image id, ``pred`` and ``entropy``."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / c) for c in CONFIGS])
    parser.update(dict(NETWORK, dataset_dir=str(folder), output_dir=str(out), ckpt_path=str(checkpoint)))
    parser.update({"num_workers": 0, "device": "$torch.device('cpu')"})
    evaluator, items = parser.get_parsed_content("evaluator"), []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: items.extend(engine.state.output))
    evaluator.run()
    return {item["id"]: {"pred": item["pred"].tolist(), "entropy": float(item["entropy"])} for item in items}


@pytest.fixture(scope="module")
def deployed(trained_bundle, tmp_path_factory):
    """model.ts exported from the session's model with the model zoo's command; a folder of real BreastMNIST
    test images (PNG, one DICOM named by its SOP Instance UID); the app's output on it (run as a user runs
    it) and the bundle's own inference on it."""
    root = tmp_path_factory.mktemp("monai_deploy")
    model = root / "model.ts"
    overrides = [arg for k, v in NETWORK.items() for arg in (f"--{k}", str(v))]
    export = [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(model)]
    checkpoint = trained_bundle["dir"] / "models" / "model.pt"
    export += ["--ckpt_file", str(checkpoint), "--meta_file", "configs/metadata.json"]
    export += ["--config_file", str(CONFIGS), *overrides]
    done = subprocess.run(export, cwd=BUNDLE, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]

    images = root / "images"
    (images / "more").mkdir(parents=True)
    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        pixels = arrays["test_images"][: DICOM_IMAGE + 1]
    for i in range(PNGS):  # one in a subfolder: its id is the relative path, as in monai.bundle run
        Image.fromarray(pixels[i]).save(images / ("more" if i == 1 else ".") / f"breastmnist_test_{i}.png")
    write_dicom(images / f"{SOP_INSTANCE_UID}.dcm", pixels[DICOM_IMAGE])

    out = root / "out"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    command = [sys.executable, str(APP), "-i", str(images), "-o", str(out), "-m", str(model)]
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    expected = bundle_inference(images, root / "inference", checkpoint)
    return {"out": out, "expected": expected, "log": run.stdout + run.stderr}


def test_app_writes_every_image_with_its_class_scores_and_uncertainty_as_the_bundle(deployed):
    rows = json.loads((deployed["out"] / "predictions.json").read_text())
    expected = deployed["expected"]
    ids = [f"breastmnist_test_{i}" for i in range(PNGS) if i != 1] + ["more/breastmnist_test_1", SOP_INSTANCE_UID]
    assert sorted(r["id"] for r in rows) == sorted(ids) == sorted(expected)
    for row in rows:
        want = expected[row["id"]]
        assert list(row["scores"]) == CLASSES
        assert list(row["scores"].values()) == pytest.approx(want["pred"], abs=1e-5)
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["class"] == CLASSES[int(np.argmax(want["pred"]))] == CLASSES[row["class_index"]]
        assert row["entropy"] == pytest.approx(want["entropy"], abs=1e-5)
    by_file = {r["file"]: r["id"] for r in rows}
    assert by_file[f"{SOP_INSTANCE_UID}.dcm"] == SOP_INSTANCE_UID and by_file["more/breastmnist_test_1.png"] == ids[-2]


def test_app_writes_a_csv_with_the_bundles_columns(deployed):
    with open(deployed["out"] / "predictions.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["id", "predicted_label", *(f"prob_{c}" for c in CLASSES), "entropy", "file"]
    for row in table:
        want = deployed["expected"][row["id"]]
        assert [float(row[f"prob_{c}"]) for c in CLASSES] == pytest.approx(want["pred"], abs=2e-6)
        assert row["predicted_label"] == CLASSES[int(np.argmax(want["pred"]))]
