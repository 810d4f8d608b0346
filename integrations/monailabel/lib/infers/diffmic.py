"""DiffMIC's bundle as a MONAI Label classification task: the bundle's own preprocessing, inferer and
postprocessing, with its dataset/recipe overlays, the class names of the merged config and a writer that
lists every class with its probability."""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.utils.others.generic import strtobool
from PIL import Image

__all__ = ["DiffMICClassification", "image_id"]

logger = logging.getLogger(__name__)

TRAINING_STATE = re.compile(r"^latest_checkpoint_epoch=\d+\.pt$")  # scripts.checkpoint.LATEST


def image_id(path: str) -> str:
    """The identifier that the bundle's inference gives a file at the top of its image folder: the file
    name without its extension (``.nii.gz`` included). It seeds the sampling noise, so MONAI Label and
    ``monai.bundle run`` give an image the same probabilities."""
    name = os.path.basename(path)
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[0]


class DiffMICClassification(BundleInferTask):
    """MONAI Label's bundle inference task with what DiffMIC's class-probability vector needs.

    The base task reads ``configs/inference.yaml`` alone, takes the labels from ``metadata.json`` (the
    default HAM10000 classes), appends ``Restored`` (for masks), calls the inferer without image ids and
    writes classes with a writer that needs a MetaTensor (``pred.array``). Here the overlays and overrides
    are merged as ``monai.bundle run`` merges them, the labels are the merged config's ``class_names``,
    nothing is restored, the image's id seeds the noise, and the result JSON lists every class.

    Args:
        path: the bundle folder (``configs/``, ``scripts/``, ``models/model.pt``).
        conf: the app's ``--conf`` pairs (the base reads ``preload``).
        overlays: config files merged after ``inference.yaml`` in this order, relative to ``path`` or
            absolute: the dataset overlay and recipe the checkpoint was trained with.
        overrides: config values set after the overlays (e.g. ``{"num_samples": 10}``).
        **kwargs: passed on to :class:`BundleInferTask` (e.g. ``skip_writer``).
    """

    def __init__(
        self,
        path: str,
        conf: dict[str, str],
        overlays: Sequence[str] = (),
        overrides: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        # read by _load_bundle_config, which the base calls before anything else of this class runs
        self.overlays = [os.path.join(path, o) for o in overlays]
        self.overrides = dict(overrides or {})
        super().__init__(
            path,
            conf,
            type=InferType.CLASSIFICATION,
            pre_filter=None,  # the preprocessing is inference's, whole: training's validation transforms
            post_filter=None,  # the postprocessing writes no file: pred (probabilities) and pred_label
            add_post_restore=False,  # a class vector has no geometry to restore
            load_strict=True,  # a checkpoint from other overlays must fail, not load in part
            **kwargs,
        )
        if self.valid:
            self.labels = {name: i for i, name in enumerate(self.bundle_config.get_parsed_content("class_names"))}
            # the base offers every models/*.pt; training's latest_checkpoint_epoch=N.pt hold its whole state, not
            # a network's weights, and fail to load: only the flat state dicts are offered
            offered = [name for name in self._config["model_filename"] if not TRAINING_STATE.match(name)]
            self._config["model_filename"] = offered
            if strtobool(conf.get("preload", "false")):
                self.warm_up()

    def warm_up(self) -> float:
        """One inference on a blank image at start (with ``preload``), so that the first request pays none of
        the one-off costs of a first run (the transforms' and the network's first calls).

        Returns:
            the seconds it took.
        """
        started = time.monotonic()
        size, channels = (self.bundle_config.get_parsed_content(k) for k in ("image_size", "in_channels"))
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "warm_up.png")
            Image.fromarray(np.zeros((size, size, 3) if channels == 3 else (size, size), np.uint8)).save(path)
            self({"image": path})  # the default device, as a request that names none
        seconds = time.monotonic() - started
        logger.info(f"DiffMIC: warm-up inference on a blank image took {seconds:.2f} s")
        return seconds

    def _load_bundle_config(self, path: str, config: str) -> ConfigParser:
        """``inference.yaml``, then the overlays, then ``bundle_root`` and the overrides."""
        parser = ConfigParser()
        parser.read_config([config, *self.overlays])
        parser.update({self.const.key_bundle_root(): path, **self.overrides})
        return parser

    def inferer(self, data: dict[str, Any] | None = None) -> Callable[..., torch.Tensor]:
        """The bundle's DiffMICInferer, bound to the image's identifier (the request's ``id``, else the file
        name without extension; ``"0"``, the batch position, for an in-memory image): the base calls the
        inferer without ids, and it would then seed every image's noise alike."""
        inferer = super().inferer(data)
        data = data or {}
        identifier = data.get("id") or (image_id(data["image_path"]) if data.get("image_path") else "0")
        return functools.partial(inferer, ids=[str(identifier)])

    def writer(self, data: dict[str, Any], extension: str | None = None, dtype: Any = None) -> tuple[None, dict]:
        """No file; the JSON result lists every class (MONAI Label's ``prediction`` entries) and the predicted one.

        Returns:
            ``None`` and ``{"prediction": [{"idx", "label", "score"}, ...], "predicted": {"idx", "label",
            "score"}}``, scores being the class probabilities of the denoised prediction.
        """
        scores = torch.as_tensor(data[self.output_label_key]).reshape(-1).tolist()
        names = sorted(self.labels, key=self.labels.get)
        if len(scores) != len(names):
            raise ValueError(f"{len(scores)} scores for the {len(names)} classes {names}")
        prediction = [{"idx": i, "label": names[i], "score": score} for i, score in enumerate(scores)]
        return None, {"prediction": prediction, "predicted": prediction[int(data["pred_label"])]}
