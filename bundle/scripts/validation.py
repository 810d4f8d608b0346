"""Up-front checks of the datalists: every problem listed at once, with file and row, before any training step."""

from __future__ import annotations

import csv
import io
import logging
import numbers
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

__all__ = [
    "validate_datalists",
    "check_inference_images",
    "unusable_files",
    "summarize_datalists",
    "check_image_file",
    "SPLITS",
]

SPLITS = ("train", "validation", "test")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_LISTED = 30  # problems shown in one message; the count says how many there are
IMBALANCE = 3.0  # largest to smallest training class at which validate_data suggests the class-weighting options

logger = logging.getLogger(__name__)


def check_image_file(path: str) -> str | None:
    """Why an image file cannot be used (missing, a broken or looping link, empty, truncated, undecodable,
    a 3D volume), or None if it decodes to a 2D image."""
    if not os.path.isfile(path):
        return "a broken or looping symbolic link" if os.path.islink(path) else "file not found"
    if os.path.getsize(path) == 0:
        return "empty file (0 bytes)"
    try:
        if path.lower().endswith(PIL_SUFFIXES):
            with Image.open(path) as image:
                image.load()  # decodes every pixel: a truncated file fails here, not in the middle of training
            return None
        from monai.transforms import LoadImage

        image = LoadImage(image_only=True, ensure_channel_first=True)(path)
    except Exception as error:  # noqa: BLE001 - any decoder failure makes the file unusable; the message says which
        return f"cannot be decoded ({type(error).__name__}: {error})"
    spatial = [n for n in image.shape[1:] if n != 1]  # a slice stored as a volume of depth 1 is 2D (Ensure2Dd)
    if len(spatial) != 2:
        return f"not a 2D image: shape {tuple(image.shape)} (channels first); DiffMIC classifies 2D images"
    return None


def unusable_files(files: list[str], workers: int = 8) -> dict[str, str]:
    """``{file: why}`` for every file of ``files`` that :func:`check_image_file` rejects, decoded in threads."""
    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding releases the GIL
        return {path: why for path, why in zip(files, pool.map(check_image_file, files), strict=True) if why}


def _where(item: dict) -> str:
    return f"{item['source']}: " if item.get("source") else ""


def _raise(problems: list[str], what: str, hint: str = "") -> None:
    shown = "\n  ".join(problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise ValueError(f"{len(problems)} problem(s) in {what}:\n  {shown}{more}{hint}")


def validate_datalists(
    datalists: dict[str, list[dict]],
    class_names: Sequence[str],
    on_bad_image: str = "error",
    splits: Sequence[str] = SPLITS,
    workers: int = 8,
) -> dict[str, list[dict]]:
    """Checks the train/validation/test datalists once, before training or evaluation uses them.

    Problems found together and reported in one error, each with its file and, for CSV datasets, row:
    an empty split; a label that is not an integer in [0, num_classes) (``num_classes`` disagreeing
    with the data); a class with no training image; an image id or file in two splits (e.g. train and
    test); an image file that is missing, empty, truncated or undecodable.

    Args:
        datalists: ``{split: [{"image", "label", "id", optional "source"}]}``; ``image`` is a file path
            or an in-memory array (arrays are not decoded again); an optional ``"problems"`` list holds
            what the reader found (rows with unknown labels, ...), reported with the rest.
        class_names: class names in index order.
        on_bad_image: ``error`` (unreadable image files are problems) or ``skip`` (they are left out with
            a warning listing them; the other checks still fail).
        splits: the splits that must exist and be non-empty.
        workers: threads that decode image files.

    Returns:
        the datalists, without the skipped images.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    num_classes = len(class_names)
    problems = list(datalists.get("problems", []))  # found while reading the lists (scripts.data, strict=False)
    problems += [f"split {s!r} is empty (or missing)" for s in splits if not datalists.get(s)]
    for split in splits:
        for item in datalists.get(split, []):
            label = item.get("label")
            if not isinstance(label, numbers.Integral) or isinstance(label, bool) or not 0 <= label < num_classes:
                problems.append(
                    f"{_where(item)}{split} image {item.get('id')!r}: label {label!r} is not a class index in "
                    f"[0, {num_classes}) (class_names has {num_classes} classes: {list(class_names)})"
                )
    counts = Counter(item.get("label") for item in datalists.get("train", []))
    empty = [f"{c} ({name})" for c, name in enumerate(class_names) if counts[c] == 0]
    if datalists.get("train") and empty:
        problems.append(f"class(es) {', '.join(empty)} have no training image")
    seen: dict[str, str] = {}
    for split in splits:
        for item in datalists.get(split, []):
            keys = [f"id {item.get('id')!r}"]
            if isinstance(item.get("image"), str):
                keys.append(f"file {os.path.abspath(item['image'])}")
            for key in keys:
                if key in seen and seen[key] != split:
                    problems.append(f"{_where(item)}{key} is in both {seen[key]} and {split}")
                seen.setdefault(key, split)

    files = sorted({item["image"] for s in splits for item in datalists.get(s, []) if isinstance(item["image"], str)})
    bad = unusable_files(files, workers)
    bad_items = [
        f"{_where(it)}{it['image']}: {bad[it['image']]}"
        for s in splits
        for it in datalists.get(s, [])
        if isinstance(it["image"], str) and it["image"] in bad
    ]
    if on_bad_image == "error":
        problems += bad_items
    if problems:
        _raise(problems, "the datalists")
    if bad_items:
        logger.warning(
            "on_bad_image=skip: leaving out %d unreadable image(s):\n  %s", len(bad_items), "\n  ".join(bad_items)
        )
    return {
        split: [it for it in items if not (isinstance(it["image"], str) and it["image"] in bad)]
        for split, items in datalists.items()
        if split != "problems"
    }


def check_inference_images(
    items: list[dict], on_bad_image: str = "error", output_dir: str | None = None, workers: int = 8
) -> list[dict]:
    """Decodes every image to classify before the network loads: with ``on_bad_image="error"`` one error
    lists every unusable file and why; with ``"skip"`` they are left out, listed in a warning and in
    ``<output_dir>/skipped.csv`` (``image``, ``reason``), and the rest are classified.

    Returns:
        the usable items.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    unusable = unusable_files([it["image"] for it in items], workers)
    bad = [(it["image"], unusable[it["image"]]) for it in items if it["image"] in unusable]
    listed = [f"{path}: {why}" for path, why in bad]
    if bad and on_bad_image == "error":
        _raise(listed, "the images to classify", "\n--on_bad_image skip classifies the others and lists these")
    if bad:
        logger.warning("on_bad_image=skip: leaving out %d image(s):\n  %s", len(bad), "\n  ".join(listed))
        if output_dir:
            from .handlers import write_atomic

            table = io.StringIO()
            csv.writer(table, lineterminator="\n").writerows([("image", "reason"), *bad])
            write_atomic(os.path.join(output_dir, "skipped.csv"), table.getvalue())
    kept = [it for it in items if it["image"] not in unusable]
    if not kept:
        raise ValueError(f"none of the {len(items)} images can be classified (listed above)")
    return kept


def summarize_datalists(datalists: dict[str, list[dict]], class_names: Sequence[str]) -> str:
    """A table of images per split and class (what ``run validate_data`` prints once the checks pass)."""
    width = max(len(n) for n in [*class_names, "class"])
    splits = [s for s in SPLITS if s in datalists]
    lines = ["class".ljust(width) + "".join(f"{s:>12}" for s in splits)]
    for c, name in enumerate(class_names):
        lines.append(name.ljust(width) + "".join(f"{sum(it['label'] == c for it in datalists[s]):>12}" for s in splits))
    lines.append("total".ljust(width) + "".join(f"{len(datalists[s]):>12}" for s in splits))
    text = "datalists checked: no problems found\n" + "\n".join(lines)
    counts = [sum(it["label"] == c for it in datalists.get("train", [])) for c in range(len(class_names))]
    if counts and min(counts) > 0 and max(counts) >= IMBALANCE * min(counts):
        text += (
            f"\nthe training classes are imbalanced ({max(counts) / min(counts):.1f}:1, "
            f"{class_names[counts.index(max(counts))]} to {class_names[counts.index(min(counts))]}): "
            "--class_weighted_loss true (inverse-frequency weights in the cross-entropy) or "
            "--class_balanced_sampling true (classes drawn equally often) may help the rare ones"
        )
    print(text, flush=True)
    return text
