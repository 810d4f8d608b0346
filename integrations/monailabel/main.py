"""MONAI Label app that serves the DiffMIC bundle as a classification model (model name ``diffmic``).

    monailabel start_server --app integrations/monailabel --studies IMAGES --conf bundle_path bundle \
        --conf overlays configs/data/breastmnist.yaml,configs/small.yaml
"""

from __future__ import annotations

import json
import logging
import os

import monailabel
from fastapi import HTTPException
from lib.infers import DiffMICClassification
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask

logger = logging.getLogger(__name__)

MODEL_NAME = "diffmic"


class DiffMICApp(MONAILabelApp):
    """One inference task, ``diffmic``, on the bundle folder given by ``--conf bundle_path``.

    Args:
        app_dir: this folder.
        studies: the datastore: a folder of images, or a DICOMweb URL.
        conf: the ``--conf`` pairs: ``bundle_path`` (default: the repository's ``bundle/``; it needs
            ``models/model.pt``), ``overlays`` (comma-separated config files relative to the bundle folder,
            merged after ``configs/inference.yaml``: those the checkpoint was trained with), ``overrides``
            (a JSON object of config values, e.g. ``{"num_samples": 10}``), ``preload`` (``true``: load the
            network at start).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        default = os.path.join(app_dir, "..", "..", "bundle")
        self.bundle_path = os.path.abspath(conf.get("bundle_path") or default)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="DiffMIC",
            description="DiffMIC (dual-guidance diffusion) medical image classification",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        overlays = [o.strip() for o in self.conf.get("overlays", "").split(",") if o.strip()]
        overrides = json.loads(self.conf.get("overrides") or "{}")
        task = DiffMICClassification(self.bundle_path, self.conf, overlays=overlays, overrides=overrides)
        if not task.is_valid():  # the base only logs a warning and the server would start without a model
            raise FileNotFoundError(
                f"{self.bundle_path} is not a trained DiffMIC bundle: it needs configs/inference.yaml and "
                "models/model.pt (set --conf bundle_path)"
            )
        logger.info(f"+++ Adding Inferer:: {MODEL_NAME} => {task.labels}")
        return {MODEL_NAME: task}

    def infer(self, request: dict, datastore=None) -> dict:
        """MONAI Label's inference, answering what the client got wrong with a 4xx and a reason instead of a 500:
        an unknown model or image (404), a ``model_filename`` that is not one of the offered weights (400)."""
        model = request.get("model")
        task = self._infers.get(model)
        if task is None:
            raise HTTPException(404, f"no model {model!r}: this app serves {sorted(self._infers)}")
        image = request.get("image")
        if isinstance(image, str) and not os.path.exists(image):
            store = datastore or self.datastore()
            try:
                found = os.path.exists(store.get_image_uri(image) or "")  # a DICOM series is a folder
            except Exception:  # the datastore's own lookup error: an unknown id all the same
                found = False
            if not found:
                raise HTTPException(
                    404, f"no image {image!r} in the datastore: an image's id is its file name without the extension"
                )
        offered = task.config().get("model_filename") or []
        chosen = request.get("model_filename")
        if isinstance(chosen, str) and chosen not in offered:
            raise HTTPException(400, f"model_filename {chosen!r} is not one of the loadable weights {offered}")
        return super().infer(request, datastore)
