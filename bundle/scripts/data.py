"""Datalists ({image, label, id} dicts) for the datasets of the bundle, in their official layouts."""

from __future__ import annotations

import csv
import fnmatch
import itertools
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from difflib import get_close_matches
from typing import NamedTuple

import numpy as np
import torch
from monai.apps import download_url
from sklearn.model_selection import StratifiedGroupKFold

__all__ = [
    "csv_datalists",
    "class_folder_datalists",
    "labels_csv_datalists",
    "datalist_json_datalists",
    "layout_class_names",
    "save_split",
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


def _csv_id(value: str) -> str:
    """An image's id from a CSV id column: a file path loses its image extension, as inference names the file
    (the id seeds the sampling noise); any other id (``ISIC_0024306``, ``patient.001``) is kept as it is."""
    return _image_id(value) if value.lower().endswith(IMAGE_EXTENSIONS) else value


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
                "id": _csv_id(row[id_column]),
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


def _relative(path: str, root: str) -> str:
    return os.path.relpath(path, root).replace(os.sep, "/")


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


def _excluded(relative_path: str, patterns: Sequence[str]) -> bool:
    """Whether a '/'-separated path, or its last part, matches one of the glob ``patterns``."""
    name = relative_path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(relative_path, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def folder_datalist(
    folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS, exclude: Sequence[str] = ()
) -> list[dict]:
    """Every image file under ``folder`` (recursively, sorted), as ``{"image": path, "id": identifier}``.

    The identifier is the path relative to ``folder`` without its extension (``ISIC_0024306`` for
    ``ISIC_0024306.jpg``), which is how the training datalists name images, so the sampling noise, seeded
    by identifier, is the same for an image in evaluation and in inference. Symlinked subfolders are
    followed; one that leads back to a folder already listed (a loop) is skipped with a warning. Files and
    folders whose path relative to ``folder``, or name, matches a glob of ``exclude`` are left out.
    """
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder} is not a folder: set dataset_dir to the folder of images to classify")
    items, visited = [], {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        kept = []
        for name in sorted(dirs, key=lambda d: (os.path.islink(os.path.join(root, d)), d)):  # real folders first
            if _excluded(_relative(os.path.join(root, name), folder), exclude):
                continue
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
            path = os.path.join(root, name)
            if name.lower().endswith(tuple(extensions)) and not _excluded(_relative(path, folder), exclude):
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


# ---------------------------------------------------------------- a user's own dataset, in one of three layouts
# Layout names of the splits (folders, CSV `split` column); anything else is a problem
SPLIT_NAMES = {"train": "train", "training": "train", "val": "validation", "validation": "validation", "test": "test"}
JSON_KEYS = {"training": "train", "validation": "validation", "test": "test"}  # load_decathlon_datalist's keys


def _class_order(names) -> list[str]:
    """Distinct names sorted; all-integer names (grades 0, 1, ..., 10) by value, so that index i is grade i."""
    names = sorted({str(n).strip() for n in names} - {""})  # an empty label is a problem, not a class
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


def _read_split_file(split_file: str | None) -> dict | None:
    if not split_file or not os.path.isfile(split_file):
        return None
    with open(split_file) as f:
        saved = json.load(f)
    if not isinstance(saved, dict) or "class_names" not in saved:
        raise ValueError(f"{split_file} is not a split saved by this bundle (no 'class_names'); delete it or move it")
    return saved


def _top_folders(folder: str, exclude: Sequence[str], below: str = "") -> list[str]:
    """The sub-folders of ``folder`` (not hidden, not excluded), sorted."""
    return sorted(
        e.name
        for e in os.scandir(folder)
        if e.is_dir() and not e.name.startswith(".") and not _excluded(f"{below}{e.name}", exclude)
    )


def _split_folders(dataset_dir: str, exclude: Sequence[str]) -> list[str]:
    return [d for d in _top_folders(dataset_dir, exclude) if d.lower() in SPLIT_NAMES]


def _folder_classes(dataset_dir: str, exclude: Sequence[str]) -> list[str]:
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir} is not a folder: set --dataset_dir to your dataset's folder")
    splits = _split_folders(dataset_dir, exclude)
    if not splits:
        return _class_order(_top_folders(dataset_dir, exclude))
    return _class_order(c for s in splits for c in _top_folders(os.path.join(dataset_dir, s), exclude, f"{s}/"))


def _csv_rows(path: str) -> list[dict]:
    return _read_csv(path, ["image", "label"])


def _json_lists(path: str) -> dict[str, tuple[list, list]]:
    """``{split: (raw items, items with MONAI's image paths)}`` of a datalist JSON's non-empty lists."""
    from monai.data import load_decathlon_datalist

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: check dataset_dir and datalist_json")
    with open(path) as f:
        raw = json.load(f)
    if not isinstance(raw, dict) or not any(raw.get(k) for k in JSON_KEYS):
        raise ValueError(f"{path}: expected an object with a 'training' (and optional 'validation', 'test') list")
    out = {}
    for key, split in JSON_KEYS.items():
        if raw.get(key):  # an empty list is a missing split (load_decathlon_datalist cannot read an empty 'test')
            # labels are taken from the raw items: MONAI turns a label that names an existing path into that path
            loaded = load_decathlon_datalist(path, is_segmentation=False, data_list_key=key)
            rows = raw[key] if isinstance(raw[key][0], dict) else [{"image": i} for i in raw[key]]
            out[split] = (rows, loaded)
    return out


def layout_class_names(
    layout: str,
    dataset_dir: str,
    file: str | None = None,
    exclude: Sequence[str] = (),
    split_file: str | None = None,
) -> list[str]:
    """The class names of a dataset in a file layout, in index order: those of the split saved in
    ``split_file`` when there is one (the trained model's order); else the class folders' names
    (``folders``), or the distinct labels (``csv``, ``datalist_json``), sorted (integers by value).

    Args:
        layout: ``folders``, ``csv`` or ``datalist_json``.
        dataset_dir: the dataset's root folder.
        file: the CSV or JSON file, relative to ``dataset_dir``.
        exclude: glob patterns of folders left out (``folders``).
        split_file: the split saved when training began (``model_dir/datalists.json``).
    """
    saved = _read_split_file(split_file)
    if saved is not None:
        return [str(n) for n in saved["class_names"]]
    if layout == "folders":
        return _folder_classes(dataset_dir, exclude)
    if layout == "csv":
        return _class_order(row["label"] for row in _csv_rows(os.path.join(dataset_dir, file or "labels.csv")))
    if layout == "datalist_json":
        lists = _json_lists(os.path.join(dataset_dir, file or "datalist.json"))
        return _class_order(r["label"] for rows, _ in lists.values() for r in rows if r.get("label") is not None)
    raise ValueError(f"layout must be 'folders', 'csv' or 'datalist_json', got {layout!r}")


class SplitRule(NamedTuple):
    """How a layout's missing splits are carved, and where the split is saved (the layouts' common arguments)."""

    val_fraction: float
    seed: int
    test_fraction: float
    split_seed: int
    split_file: str | None


def _assign(
    records: list[tuple[dict, str | None, str | None]],
    problems: list[str],
    dataset_dir: str,
    class_names: Sequence[str],
    rule: SplitRule,
    strict: bool,
    left_out: set[str] = frozenset(),
) -> dict[str, list]:
    """Train/validation/test datalists of labelled ``(item, split or None, group or None)`` records: the
    split saved in ``split_file`` if there is one, else the layout's splits, the missing ones carved
    (test from everything not in a split, then validation from training; stratified, grouped).

    ``left_out``: ids already reported as problems (not reported again as missing from the saved split).
    """
    ids = [item["id"] for item, _, _ in records]
    clashes = [i for i, n in Counter(ids).items() if n > 1]
    problems += [f"{dataset_dir}: several images have the id {i!r} (e.g. a.png and a.jpg)" for i in clashes]
    val_fraction, seed, test_fraction, split_seed, split_file = rule
    saved = _read_split_file(split_file)
    out: dict[str, list] = {"train": [], "validation": [], "test": []}
    if saved is not None:
        if [str(n) for n in saved["class_names"]] != list(class_names):
            problems.append(
                f"class_names {list(class_names)} differ from {saved['class_names']}, those of the split saved in "
                f"{split_file} when training began (the model's output order): leave --class_names out"
            )
        by_id = {item["id"]: (item, split) for item, split, _ in records}
        missing = []
        for key, split in JSON_KEYS.items():
            for entry in saved.get(key, []):
                found = by_id.pop(entry["id"], None)
                if found is None:
                    if entry["id"] not in left_out:
                        missing.append(entry["image"])
                    continue
                item, declared = found
                # held-out images must stay held out; a layout's training images may have been carved into others
                if declared in ("validation", "test") and declared != split:
                    problems.append(
                        f"{item.get('source') or item['image']}: in {declared} now but in {split} in {split_file}, "
                        "the split saved when training began"
                    )
                out[split].append(item)
        if missing:
            problems.append(
                f"{split_file}: {len(missing)} image(s) of the split saved when training began are not in "
                f"{dataset_dir} any more (e.g. {', '.join(missing[:3])}): restore them, or train anew with "
                f"another --model_dir (or delete {split_file}) to carve a new split"
            )
        if by_id:
            logger.warning(
                f"{len(by_id)} image(s) of {dataset_dir} are not in the split saved in {split_file} (added after "
                f"training began?) and are left out, e.g. {', '.join(sorted(by_id)[:3])}"
            )
    else:
        for item, split, _ in records:
            if split in out:
                out[split].append(item)
        group_of = {item["id"]: group or item["id"] for item, _, group in records}
        pool = [item for item, split, _ in records if split not in ("validation", "test")]
        if not out["test"]:
            pool, out["test"] = _carve(pool, [group_of[i["id"]] for i in pool], test_fraction, split_seed)
        if not out["validation"]:
            pool, out["validation"] = _carve(pool, [group_of[i["id"]] for i in pool], val_fraction, seed)
        out["train"] = pool
    if problems and strict:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise ValueError(f"{len(problems)} problem(s) in the dataset at {dataset_dir}:\n  {shown}{more}")
    return {**out, "problems": problems} if problems else out


def class_folder_datalists(
    dataset_dir: str,
    class_names: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    split_file: str | None = None,
    strict: bool = True,
) -> dict[str, list]:
    """Datalists of images in class folders: ``dataset_dir/<class>/**`` or ``dataset_dir/<split>/<class>/**``
    (split: ``train``, ``val`` or ``validation``, ``test``); missing splits are carved as in :func:`_assign`.

    Args:
        dataset_dir: the dataset's root folder.
        class_names: the classes in index order (each a folder name); None: the folders' names, sorted.
        exclude: glob patterns of files or folders to leave out (e.g. ``["*_mask.png"]``), matched against the
            path relative to ``dataset_dir`` and against the name.
        val_fraction, seed: the validation share carved from training, and its seed.
        test_fraction, split_seed: the test share carved where there is no test folder, and its seed.
        split_file: a split saved when training began (:func:`save_split`): used instead of carving.
        strict: raise on problems (a folder that is not a class, an image outside a class folder); with
            False they are returned under ``"problems"`` for :func:`scripts.validation.validate_datalists`.

    Returns:
        ``{"train", "validation", "test"}`` lists of ``{"image", "label", "id"}``; ``id``: the path relative
        to ``dataset_dir`` without extension, as :func:`folder_datalist` (inference) names the image.
    """
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or ())
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"{dataset_dir} is not a folder: set --dataset_dir to your dataset's folder")
    if class_names is None:
        class_names = layout_class_names("folders", dataset_dir, exclude=exclude, split_file=split_file)
    index = {str(n): i for i, n in enumerate(class_names)}
    splits = _split_folders(dataset_dir, exclude)
    problems = [
        f"{os.path.join(dataset_dir, d)}: a folder beside the split folders {splits}: put class folders in "
        "train/, val/ or test/ (or use no split folders)"
        for d in _top_folders(dataset_dir, exclude)
        if splits and d not in splits
    ]
    records, unknown, loose = [], Counter(), []
    for item in folder_datalist(dataset_dir, exclude=exclude):
        parts, split, root = item["id"].split("/"), None, dataset_dir
        if splits and parts[0] in splits:
            split, root, parts = SPLIT_NAMES[parts[0].lower()], os.path.join(dataset_dir, parts[0]), parts[1:]
        elif splits and len(parts) > 1:
            continue  # in a folder beside the split folders: reported once, with that folder
        if len(parts) > 1 and parts[0].startswith("."):
            continue  # hidden folders (.git, .ipynb_checkpoints) are not classes
        if len(parts) < 2:
            loose.append(item["image"])
        elif parts[0] not in index:
            unknown[os.path.join(root, parts[0])] += 1
        else:
            records.append(({**item, "label": index[parts[0]]}, split, None))
    problems += [
        f"{folder}: class folder {os.path.basename(folder)!r} ({n} image(s)) is not one of class_names {list(index)}"
        for folder, n in sorted(unknown.items())
    ]
    problems += [f"{path}: not in a class folder (<class>/... or <split>/<class>/...)" for path in loose]
    rule = SplitRule(val_fraction, seed, test_fraction, split_seed, split_file)
    return _assign(records, problems, dataset_dir, list(index), rule, strict)


def _labelled(label, index: dict, where: str, problems: list[str]) -> int | None:
    """The class index of a CSV or JSON label (a class name; integers are names too), or None and a problem."""
    name = "" if label is None else str(label).strip()
    if name in index:
        return index[name]
    problems.append(f"{where}: unknown label {name!r} (expected one of {list(index)})")
    return None


def labels_csv_datalists(
    dataset_dir: str,
    class_names: Sequence[str] | None = None,
    labels_csv: str = "labels.csv",
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    split_file: str | None = None,
    strict: bool = True,
) -> dict[str, list]:
    """Datalists of a CSV with the columns ``image`` (a path relative to the CSV), ``label`` (a class name;
    ``0``, ``1``, ... are names too), optional ``split`` (train, val or validation, test; empty: carved) and
    optional ``group`` (images of one group stay on one side of a carved split, e.g. a patient).

    Args are those of :func:`class_folder_datalists`, with ``labels_csv``: the CSV file, relative to
    ``dataset_dir``. Problems name the CSV row (unknown label or split, an image listed twice).

    Returns:
        ``{"train", "validation", "test"}`` lists of ``{"image", "label", "id", "source"}``; ``id``: the image's
        path relative to ``dataset_dir`` without extension, as :func:`folder_datalist` names it.
    """
    path = os.path.join(dataset_dir, labels_csv)
    rows = _csv_rows(path)
    if class_names is None:
        class_names = layout_class_names("csv", dataset_dir, labels_csv, split_file=split_file)
    index = {str(n): i for i, n in enumerate(class_names)}
    base = os.path.dirname(os.path.abspath(path))
    records, problems, first, left_out = [], [], {}, set()
    for line, row in enumerate(rows, start=2):
        where = f"{path} row {line}"
        if not (row.get("image") or "").strip():
            problems.append(f"{where}: no image")
            continue
        image = os.path.normpath(os.path.join(base, row["image"].strip()))
        item = {"image": image, "id": _image_id(_relative(image, dataset_dir)), "source": where}
        if item["id"] in first:
            problems.append(f"{where}: {row['image']!r} is listed again (first on row {first[item['id']]})")
            continue
        first[item["id"]] = line
        split = (row.get("split") or "").strip().lower() or None
        if split is not None and split not in SPLIT_NAMES:
            problems.append(f"{where}: split {row['split']!r} is not train, val, validation or test (or empty)")
            left_out.add(item["id"])
            continue
        label = _labelled(row["label"], index, where, problems)
        if label is None:
            left_out.add(item["id"])
            continue
        group = (row.get("group") or "").strip() or None
        records.append(({**item, "label": label}, SPLIT_NAMES.get(split), group))
    rule = SplitRule(val_fraction, seed, test_fraction, split_seed, split_file)
    return _assign(records, problems, dataset_dir, list(index), rule, strict, left_out)


def datalist_json_datalists(
    dataset_dir: str,
    class_names: Sequence[str] | None = None,
    datalist_json: str = "datalist.json",
    val_fraction: float = 0.1,
    seed: int = 0,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    split_file: str | None = None,
    strict: bool = True,
) -> dict[str, list]:
    """Datalists of a MONAI datalist JSON (as :func:`monai.data.load_decathlon_datalist` reads it): lists
    ``training``, optional ``validation`` and ``test`` of ``{"image": path, "label": class name}``, paths
    relative to the JSON's folder; an optional ``group`` key keeps a group on one side of a carved split.

    Args are those of :func:`labels_csv_datalists`, with ``datalist_json`` instead of ``labels_csv``.
    """
    path = os.path.join(dataset_dir, datalist_json)
    lists = _json_lists(path)
    if class_names is None:
        class_names = layout_class_names("datalist_json", dataset_dir, datalist_json, split_file=split_file)
    index = {str(n): i for i, n in enumerate(class_names)}
    key_of = {split: key for key, split in JSON_KEYS.items()}
    records, problems, left_out = [], [], set()
    for split, (rows, loaded) in lists.items():
        for i, (row, entry) in enumerate(zip(rows, loaded, strict=True)):
            where = f"{path} {key_of[split]}[{i}]"
            if not isinstance(entry.get("image"), str):
                problems.append(f"{where}: 'image' must be one file path, got {entry.get('image')!r}")
                continue
            image = os.path.normpath(entry["image"])
            item = {"image": image, "id": _image_id(_relative(image, dataset_dir)), "source": where}
            label = _labelled(row.get("label"), index, where, problems)
            if label is None:
                left_out.add(item["id"])
                continue
            group = row.get("group")
            records.append(({**item, "label": label}, split, None if group is None else str(group)))
    rule = SplitRule(val_fraction, seed, test_fraction, split_seed, split_file)
    return _assign(records, problems, dataset_dir, list(index), rule, strict, left_out)


def save_split(
    datalists: dict[str, list], split_file: str | None, dataset_dir: str, class_names: Sequence[str]
) -> str | None:
    """Writes the train/validation/test split of a file layout to ``split_file`` once, when training begins
    (after ``model_dir`` is locked); the layouts read it back instead of carving again, so that a resumed
    run validates, and evaluation tests, on the images this training held out, even if files are added.

    The file is a datalist JSON (``training``, ``validation``, ``test`` lists of ``{"image", "label", "id"}``,
    images relative to ``dataset_dir``, labels as class names) with ``class_names`` in the model's order.
    Nothing is written when ``split_file`` is None, when it exists already, or outside the main process.

    Returns:
        ``split_file`` if it was written, else None.
    """
    from .distributed import is_main_process
    from .handlers import write_atomic

    if not split_file or os.path.isfile(split_file) or not is_main_process():
        return None
    content = {"dataset_dir": os.path.abspath(dataset_dir), "class_names": list(class_names)}
    for key, split in JSON_KEYS.items():
        content[key] = [
            {"image": _relative(it["image"], dataset_dir), "label": class_names[it["label"]], "id": it["id"]}
            for it in datalists.get(split, [])
        ]
    write_atomic(split_file, json.dumps(content, indent=1) + "\n")
    logger.info(f"split saved to {split_file}: evaluation and --resume read it")
    return split_file


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
