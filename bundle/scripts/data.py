"""Datalists ({image, label, id} dicts) for the datasets of the bundle, in their official layouts."""

from __future__ import annotations

import csv
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from difflib import get_close_matches

import numpy as np
import torch
from monai.apps import download_url
from sklearn.model_selection import StratifiedGroupKFold

__all__ = [
    "csv_datalists",
    "medmnist_datalists",
    "folder_datalist",
    "read_datalist",
    "class_weights",
    "class_balanced_sampler",
    "IMAGE_EXTENSIONS",
]

logger = logging.getLogger(__name__)

# files that inference reads from a folder: MONAI's PIL, NiBabel and ITK readers load them
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


def _read_csv(path: str, columns: Sequence[str]) -> list[dict[str, str]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: check dataset_dir and the dataset's layout in its README")
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: a BOM is not part of the first column
        reader = csv.DictReader(f)
        found = reader.fieldnames or []
        missing = [c for c in columns if c not in found]
        if missing:
            hints = [
                f"{c!r} (did you mean {close[0]!r}?)" for c in missing if (close := get_close_matches(c, found, 1))
            ]
            hint = f"; {', '.join(hints)}" if hints else ""
            raise ValueError(f"{path}: missing column(s) {missing}; found {found}{hint}")
        return list(reader)


def _carve(items: list[dict], groups: list[str], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Splits off about ``fraction`` of ``items``, stratified by label, groups kept on one side.

    The held-out part is whole folds of a stratified group k-fold: one of 1/fraction folds where that is a
    whole number (0.1: one fold of 10), else tenths (0.3: three folds of 10).

    Returns:
        the kept and the held-out items, each in their original order.
    """
    labels = [it["label"] for it in items]
    per_fold = 1.0 / fraction
    n_folds, taken = (round(per_fold), 1) if abs(per_fold - round(per_fold)) < 1e-6 else (10, round(10 * fraction))
    # scikit-learn needs a class with at least n_splits members: tiny sets get a larger held-out share
    n_folds = min(n_folds, max(Counter(labels).values()))
    if n_folds < 2:
        return items, []  # nothing to carve: an empty split is reported by scripts.validation
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed).split(
        np.zeros(len(items)), labels, groups
    )
    held = {int(i) for _, fold in itertools.islice(folds, min(max(taken, 1), n_folds - 1)) for i in fold}
    return [it for i, it in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def csv_datalists(
    dataset_dir: str,
    labels_csv: str,
    id_column: str,
    label_column: str,
    image_path: str,
    split_csv: str | None,
    label_values: Sequence,
    val_fraction: float = 0.1,
    seed: int = 0,
    group_column: str | None = None,
    strict: bool = True,
    test_fraction: float = 0.3,
    split_seed: int = 0,
) -> dict[str, list]:
    """Train/validation/test datalists of an image folder with a label CSV and a train/test CSV.

    The validation split is carved from the training split (stratified, seeded, grouped by
    ``group_column`` when given, e.g. HAM10000's ``lesion_id``); the test split is the CSV's, or, without
    one, carved the same way from every labelled image.

    Args:
        dataset_dir: the dataset's root folder.
        labels_csv: label file, relative to ``dataset_dir``.
        id_column: image identifier column (in both CSVs).
        label_column: label column of ``labels_csv``.
        image_path: image file pattern relative to ``dataset_dir``, with ``{}`` for the identifier.
        split_csv: partition file (``id_column`` and ``split`` in {train, test}); None: carve the test split.
        label_values: the label values in class-index order (compared as strings).
        val_fraction: fraction of the training split held out for validation.
        seed: seed of the validation split.
        group_column: column whose values must not straddle train and validation.
        strict: raise on the rows' problems (unknown label, unknown id, bad split, listed twice); with False
            they are returned under ``"problems"`` for :func:`scripts.validation.validate_datalists` to report
            together with the image files' problems.
        test_fraction: without ``split_csv``: the share of images held out for testing (stratified, grouped).
        split_seed: without ``split_csv``: the seed of the test split, apart from ``seed`` so that every
            training seed is tested on the same images.

    Returns:
        ``{"train": [...], "validation": [...], "test": [...]}``, items ``{"image", "label", "id", "source"}``
        (``source``: the CSV row). Image files are not opened here: :mod:`scripts.validation` checks them.
    """
    labels_path = os.path.join(dataset_dir, labels_csv)
    split_path = os.path.join(dataset_dir, split_csv) if split_csv else ""
    columns = [id_column, label_column] + ([group_column] if group_column else [])
    rows = _read_csv(labels_path, columns)
    index = {str(v): i for i, v in enumerate(label_values)}
    problems, by_id, unlabelled = [], {}, set()
    for line, row in enumerate(rows, start=2):
        if row[label_column] not in index:
            problems.append(f"{labels_path} row {line}: unknown label {row[label_column]!r} (expected {list(index)})")
            unlabelled.add(row[id_column])  # reported once, here, not again where the split lists it
            continue
        path = os.path.join(dataset_dir, image_path.format(row[id_column]))
        by_id[row[id_column]] = (
            {
                "image": path,
                "label": index[row[label_column]],
                "id": row[id_column],
                "source": f"{labels_path} row {line}",
            },
            row[group_column] if group_column else row[id_column],
        )
    splits: dict[str, list] = {"train": [], "test": []}
    groups, listed = [], {}
    split_rows = [] if split_csv is None else _read_csv(split_path, [id_column, "split"])
    if split_csv is None:  # every labelled image, the test share carved grouped and stratified
        items = [item for item, _ in by_id.values()]
        pool_groups = [group for _, group in by_id.values()]
        splits["train"], splits["test"] = _carve(items, pool_groups, test_fraction, split_seed)
        kept = {it["id"] for it in splits["train"]}
        groups = [group for item, group in by_id.values() if item["id"] in kept]
    for line, row in enumerate(split_rows, start=2):
        if row[id_column] not in by_id:
            if row[id_column] not in unlabelled:
                problems.append(f"{split_path} row {line}: {row[id_column]!r} is not in {labels_path}")
            continue
        if row["split"] not in splits:
            problems.append(f"{split_path} row {line}: split {row['split']!r} is neither 'train' nor 'test'")
            continue
        if row[id_column] in listed:
            problems.append(
                f"{split_path} row {line}: {row[id_column]!r} is listed again (first on row {listed[row[id_column]]})"
            )
            continue
        listed[row[id_column]] = line
        item, group = by_id[row[id_column]]
        item["source"] = f"{split_path} row {line}"  # image files are checked by scripts.validation, with this row
        splits[row["split"]].append(item)
        if row["split"] == "train":
            groups.append(group)
    if problems and strict:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} problem(s) in the dataset at {dataset_dir}:\n  {shown}{more}")
    train, validation = _carve(splits["train"], groups, val_fraction, seed) if splits["train"] else ([], [])
    out: dict[str, list] = {"train": train, "validation": validation, "test": splits["test"]}
    return {**out, "problems": problems} if problems else out


def medmnist_datalists(
    dataset_dir: str, name: str, url: str | None = None, md5: str | None = None
) -> dict[str, list[dict]]:
    """The official train/val/test splits of a MedMNIST ``.npz`` file (images kept in memory).

    A missing file is downloaded from ``url`` when one is given (to a temporary file, checked against
    ``md5``, then moved into place); an existing file is checked against ``md5``.

    Args:
        dataset_dir: folder holding ``{name}.npz`` (the layout the ``medmnist`` package reads).
        name: e.g. ``breastmnist`` or ``retinamnist``.
        url: where to download the file from if it is missing.
        md5: the file's MD5 checksum.

    Returns:
        ``{"train", "validation", "test"}`` datalists; ``image`` is an (H, W) or (H, W, C) uint8 array.
    """
    path = os.path.join(dataset_dir, f"{name}.npz")
    if url or md5:
        if not (url or os.path.isfile(path)):
            raise FileNotFoundError(f"{path} not found and no download URL given")
        download_url(url or "", path, hash_val=md5, hash_type="md5", progress=False)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: check dataset_dir and the MedMNIST file name")
    with np.load(path, allow_pickle=False) as arrays:
        out = {}
        for split, key in (("train", "train"), ("validation", "val"), ("test", "test")):
            images, labels = arrays[f"{key}_images"], arrays[f"{key}_labels"].reshape(-1)
            out[split] = [
                {"image": images[i], "label": int(labels[i]), "id": f"{name}_{key}_{i}"} for i in range(len(labels))
            ]
    return out


def _image_id(relative_path: str) -> str:
    """An image's identifier: its path relative to the listed folder, without the extension, '/'-separated."""
    name = relative_path.replace(os.sep, "/")
    for ext in sorted(IMAGE_EXTENSIONS, key=len, reverse=True):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return os.path.splitext(name)[0]


def _check_unique(items: list[dict], source: str) -> None:
    seen: dict[str, str] = {}
    clashes = []
    for it in items:
        if it["id"] in seen:
            clashes.append(f"{it['image']} and {seen[it['id']]} share the id {it['id']!r}")
        seen.setdefault(it["id"], it["image"])
    if clashes:
        shown = "\n  ".join(clashes)
        raise ValueError(f"{source}: image ids must be unique (they seed the sampling noise):\n  {shown}")


def folder_datalist(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[dict]:
    """Every image file under ``folder`` (recursively, sorted), as ``{"image": path, "id": identifier}``.

    The identifier is the path relative to ``folder`` without its extension (``ISIC_0024306`` for
    ``ISIC_0024306.jpg``), which is how the training datalists name images, so the sampling noise, seeded
    by identifier, is the same for an image in evaluation and in inference. Symlinked subfolders are
    followed; one that leads back to a folder already listed (a loop) is skipped with a warning.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder: set dataset_dir to the folder of images to classify")
    items, visited = [], {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(root, d)), d)):  # real folders first
            target = os.path.realpath(os.path.join(root, name))
            if target in visited:
                logger.warning(
                    f"{os.path.join(root, name)} leads to a folder listed already (a symlink loop?): skipped"
                )
                continue
            visited.add(target)
            kept.append(name)
        dirs[:] = sorted(kept)
        for name in sorted(files):
            if name.lower().endswith(tuple(extensions)):
                path = os.path.join(root, name)
                items.append({"image": path, "id": _image_id(os.path.relpath(path, folder))})
    if not items:
        raise ValueError(f"no image files ({', '.join(extensions)}) under {folder}")
    _check_unique(items, folder)
    return items


def read_datalist(path: str) -> list[dict]:
    """Images listed in a CSV (column ``image``, optional ``id``) or a JSON file (a list of such objects,
    or ``{"data": [...]}``). Relative paths are relative to the list's folder; ``id`` defaults to the file
    name without extension. Every missing file is reported together, with its row.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"datalist {path} not found")
    if path.lower().endswith(".json"):
        with open(path) as f:
            content = json.load(f)
        rows = content.get("data") if isinstance(content, dict) else content
        if not isinstance(rows, list) or not all(isinstance(r, dict) and "image" in r for r in rows):
            raise ValueError(f"{path}: expected a list of objects with an 'image' key (or {{'data': [...]}})")
        where = [f"{path} item {i}" for i in range(len(rows))]
    else:
        rows = _read_csv(path, ["image"])
        where = [f"{path} row {i}" for i in range(2, len(rows) + 2)]
    base = os.path.dirname(os.path.abspath(path))
    items, problems = [], []
    for row, place in zip(rows, where, strict=True):
        image = os.path.join(base, str(row["image"]))
        if not os.path.isfile(image):
            problems.append(f"{place}: image file {image} not found")
        items.append({"image": image, "id": str(row.get("id") or _image_id(os.path.basename(str(row["image"]))))})
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {path}:\n  " + "\n  ".join(problems))
    if not items:
        raise ValueError(f"{path} lists no images")
    _check_unique(items, path)
    return items


def class_weights(items: Sequence[dict], num_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights, normalised to mean 1, for a weighted cross-entropy."""
    counts = Counter(int(it["label"]) for it in items)
    missing = [c for c in range(num_classes) if counts[c] == 0]
    if missing:
        raise ValueError(f"class(es) {missing} have no training image")
    weights = torch.tensor([1.0 / counts[c] for c in range(num_classes)])
    return weights * num_classes / weights.sum()


def class_balanced_sampler(items: Sequence[dict], num_classes: int) -> torch.utils.data.Sampler:
    """Draws training images with replacement so that every class is equally likely.

    It draws from torch's global generator, which the trainer seeds from (seed, epoch) at each epoch's
    start, so the draws of an epoch are the same in a resumed run.
    """
    per_class = class_weights(items, num_classes)
    weights = torch.stack([per_class[int(it["label"])] for it in items]).double()
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(items), replacement=True)
