"""DiffMIC as a MONAI Deploy application (MONAI Deploy App SDK 4.0): classifies every image of a folder with the
bundle's TorchScript export (``model.ts`` from ``python -m monai.bundle ckpt_export``) and writes, per image, the
class name, every class's probability and the uncertainty (predictive entropy).

    python integrations/monai_deploy/app.py -i INPUT_FOLDER -o OUTPUT_FOLDER -m model.ts

Operators: :class:`ImageFolderLoader` (this file; the SDK has no loader of 2D PNG/JPEG files) reads each image
with the bundle's own ``LoadImaged`` (the reader inference.yaml uses, so the pixels are those of
``monai.bundle run``), the SDK's ``MonaiBundleInferenceOperator`` runs the bundle's ``deploy_preprocessing``,
``inferer`` and ``postprocessing`` from the configs embedded in model.ts, :class:`ClassificationWriter` (this
file) writes ``predictions.csv`` and ``predictions.json`` to the output folder. Each image's sampling noise is
seeded by its id, as in ``monai.bundle run``: the file's path relative to the input folder without its
extension, or for a DICOM file its SOP Instance UID. See README.md beside this file.

Environment: ``DIFFMIC_BUNDLE_DIR`` (the bundle folder whose ``scripts`` package the configs import; default:
this repository's ``bundle``), ``DIFFMIC_CONFIG_NAMES`` (comma-separated names of the configs in model.ts's
``extra/`` merged in that order; default: ``inference`` then the others by name).
"""

# ruff: noqa: E402 - the bundle's folder goes on sys.path before its scripts are imported

from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

BUNDLE_DIR = Path(os.environ.get("DIFFMIC_BUNDLE_DIR", Path(__file__).resolve().parents[2] / "bundle"))
if str(BUNDLE_DIR) not in sys.path:
    sys.path.insert(0, str(BUNDLE_DIR))  # the bundle's `scripts` package, imported by its configs

from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, ConditionType, Fragment, Image, IOType, Operator, OperatorSpec
from monai.deploy.operators import BundleConfigNames, IOMapping, MonaiBundleInferenceOperator
from monai.deploy.operators.monai_bundle_inference_operator import get_bundle_config

from scripts.data import folder_datalist
from scripts.inferer import ID_META_KEY
from scripts.validation import check_inference_images

DICOM_EXTENSIONS = (".dcm",)


def model_file(model_path: str | Path) -> Path:
    """The TorchScript file given by ``-m``: the file itself, or the one ``.ts`` file of a folder (a MAP's
    ``models`` folder, where it may sit in a subfolder named after the model)."""
    path = Path(model_path)
    if path.is_file():
        return path
    found = sorted(path.rglob("*.ts")) if path.is_dir() else []
    if len(found) != 1:
        raise FileNotFoundError(f"-m {model_path}: expected a model.ts file or a folder holding one, found {found}")
    return found[0]


def config_names(model: Path) -> list[str]:
    """Names of the configs merged from model.ts's ``extra/``: ``DIFFMIC_CONFIG_NAMES``, else ``inference``
    and then the other configs by name (the archive does not keep the export's order; the bundle's dataset
    and recipe overlays set disjoint keys, so their order does not matter)."""
    if os.environ.get("DIFFMIC_CONFIG_NAMES"):
        return [n.strip() for n in os.environ["DIFFMIC_CONFIG_NAMES"].split(",") if n.strip()]
    with zipfile.ZipFile(model) as archive:
        names = [Path(n).stem for n in archive.namelist() if Path(n).parent.name == "extra"]
    names = [n for n in names if n != "metadata"]
    if "inference" not in names:
        raise ValueError(f"{model} embeds no inference config (extra/inference.json): export it with ckpt_export")
    return ["inference", *sorted(n for n in names if n != "inference")]


def image_id(path: str, listed_id: str) -> str:
    """The id that seeds an image's sampling noise: a DICOM file's SOP Instance UID, else the folder
    listing's id (the path relative to the input folder without extension, as ``monai.bundle run``)."""
    if path.lower().endswith(DICOM_EXTENSIONS):
        import pydicom

        uid = getattr(pydicom.dcmread(path, stop_before_pixels=True), "SOPInstanceUID", None)
        if uid:
            return str(uid)
    return listed_id


class ImageFolderLoader(Operator):
    """Emits the images of a folder (``items``: ``{"image": path, "id": id}``) one per call, with the bundle's
    own image loading (inference.yaml's ``LoadImaged``: PNG, JPEG, BMP through PIL, TIFF, NIfTI and DICOM
    through ITK, in numpy order).

    Named outputs:
        image: an SDK ``Image``: the pixels as read (8- or 16-bit integers kept) and their metadata, which
            holds ``original_channel_dim`` and the image id (``scripts.inferer.ID_META_KEY``).
        image_id: the image id.
        file: the file's path relative to the input folder.
    """

    def __init__(self, fragment: Fragment, *args, input_folder: Path, items: list[dict], load_transform, **kwargs):
        self.input_folder = Path(input_folder)
        self.items = items
        self.load = load_transform
        self.position = 0
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.output("image")
        spec.output("image_id").condition(ConditionType.NONE)
        spec.output("file").condition(ConditionType.NONE)

    def compute(self, op_input, op_output, context) -> None:
        item = self.items[self.position]
        self.position += 1
        identity = image_id(item["image"], item["id"])
        pixels = self.load({"image": item["image"]})["image"]
        metadata = dict(pixels.meta)
        metadata[ID_META_KEY] = identity
        logging.info(f"{item['image']}: id {identity}, shape {tuple(pixels.shape)}")
        op_output.emit(Image(np.array(pixels.numpy()), metadata=metadata), "image")  # a writable copy
        op_output.emit(identity, "image_id")
        op_output.emit(os.path.relpath(item["image"], self.input_folder), "file")


def predictive_entropy(probs: np.ndarray) -> float:
    """The entropy in nats of class probabilities (0 log 0 = 0), the bundle's ``entropy``."""
    return 0.0 - sum(p * math.log(p) for p in probs.astype(np.float64).tolist() if p > 0)  # 0.0 -: no -0.0


class ClassificationWriter(Operator):
    """Writes the predictions received so far to ``output_folder``, rewritten after every image:
    ``predictions.csv`` (the columns of ``monai.bundle run``'s: ``id``, ``predicted_label``,
    ``prob_<class>``, ``entropy``; and ``file``) and ``predictions.json`` (per image: ``id``, ``file``,
    ``class``, ``class_index``, ``scores`` by class name, ``entropy``).

    Named inputs:
        pred: the class probabilities (num_classes,) from the bundle operator.
        image_id: the image id; file: the image's path relative to the input folder.
    """

    def __init__(self, fragment: Fragment, *args, output_folder: Path, class_names: list[str], **kwargs) -> None:
        self.output_folder = Path(output_folder)
        self.class_names = list(class_names)
        self.rows: list[dict] = []
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("pred")
        spec.input("image_id")
        spec.input("file")

    def compute(self, op_input, op_output, context) -> None:
        probs = np.asarray(op_input.receive("pred"), dtype=np.float32).reshape(-1)
        if probs.shape[0] != len(self.class_names):
            raise ValueError(f"{probs.shape[0]} scores for {len(self.class_names)} classes {self.class_names}")
        index = int(probs.argmax())
        row = {
            "id": str(op_input.receive("image_id")),
            "file": str(op_input.receive("file")),
            "class": self.class_names[index],
            "class_index": index,
            "scores": {name: float(p) for name, p in zip(self.class_names, probs, strict=True)},
            "entropy": predictive_entropy(probs),
        }
        self.rows.append(row)
        logging.info(f"{row['id']}: {row['class']} {row['scores']}")
        self.write()

    def write(self) -> None:
        self.output_folder.mkdir(parents=True, exist_ok=True)
        table = [
            {
                "id": r["id"],
                "predicted_label": r["class"],
                **{f"prob_{n}": f"{p:.6f}" for n, p in r["scores"].items()},
                "entropy": f"{r['entropy']:.6f}",
                "file": r["file"],
            }
            for r in self.rows
        ]
        _write_atomic(self.output_folder / "predictions.json", lambda f: json.dump(self.rows, f, indent=1))

        def csv_rows(f) -> None:
            writer = csv.DictWriter(f, list(table[0]))
            writer.writeheader()
            writer.writerows(table)

        _write_atomic(self.output_folder / "predictions.csv", csv_rows)


def _write_atomic(path: Path, write) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, newline="") as f:
        write(f)
    os.replace(f.name, path)


class DiffMICApp(Application):
    """Image files of ``-i`` -> DiffMIC (``-m model.ts``) -> predictions.csv/json in ``-o``."""

    def compose(self) -> None:
        app_context: AppContext = Application.init_app_context(self.argv)
        model = model_file(app_context.model_path)
        names = config_names(model)
        parser = get_bundle_config(str(model), names)  # the configs embedded in model.ts, merged
        class_names = [str(n) for n in parser.get_parsed_content("class_names")]
        load = parser.get_parsed_content("preprocessing#transforms#0")  # inference.yaml's LoadImaged
        if type(load).__name__ != "LoadImaged":
            raise TypeError(f"the first preprocessing transform of {model} is {type(load).__name__}, not LoadImaged")
        folder, output = Path(app_context.input_path), Path(app_context.output_path)
        output.mkdir(parents=True, exist_ok=True)
        # as `run`: every file decoded first; unusable ones all listed (on_bad_image: error) or skipped
        on_bad_image = parser.get_parsed_content("on_bad_image")
        items = check_inference_images(folder_datalist(str(folder)), on_bad_image, str(output))
        loader = ImageFolderLoader(self, name="loader", input_folder=folder, items=items, load_transform=load)
        loader.add_arg(CountCondition(self, count=len(loader.items), name="one_per_image"))
        inference = MonaiBundleInferenceOperator(
            self,
            name="diffmic",
            app_context=app_context,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", np.ndarray, IOType.IN_MEMORY)],
            bundle_path=model,
            bundle_config_names=BundleConfigNames(
                preproc_name="deploy_preprocessing", postproc_name="postprocessing", config_names=names
            ),
        )
        writer = ClassificationWriter(self, name="writer", output_folder=output, class_names=class_names)
        self.add_flow(loader, inference, {("image", "image")})
        self.add_flow(loader, writer, {("image_id", "image_id"), ("file", "file")})
        self.add_flow(inference, writer, {("pred", "pred")})


if __name__ == "__main__":
    logging.info(f"Begin {__name__}")
    DiffMICApp().run()
    logging.info(f"End {__name__}")
