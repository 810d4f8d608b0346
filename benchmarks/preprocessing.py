"""Preprocessing speed of full-size images: the bundle's pipeline before and after issue 17, and plain PIL.

Pipelines, each from a file to a (3, size, size) float image, timed per image on synthetic full-size
photographs (smooth colour fields, edges and noise; ``--width`` x ``--height``, JPEG quality 90 and PNG):

- ``old``: full decoding, then MONAI's ``Resized(bilinear, anti_aliasing=True)`` (Gaussian smoothing first),
  as train.yaml had it;
- ``new_full_decode``: full decoding, then ``AntialiasResized`` (torch's antialiased bilinear);
- ``new``: train.yaml's ``validate#preprocessing`` as it is (``decode_min_side``: reduced JPEG decoding, then
  ``AntialiasResized``), without the ImageNet normalisation, to compare values on the [-1, 1] scale;
- ``pil``: PIL alone (decode, centre crop, ``Image.resize`` bilinear), the reference of a plain loader.

Each row also has the mean and largest absolute difference to ``old`` on the [-1, 1] scale. Rows go to
``--out`` (default ``benchmarks/results/preprocessing.csv``); rows of the same commit, threads, format, size
and pipeline already there are skipped. From the repository root::

    python benchmarks/preprocessing.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "bundle"), str(Path(__file__).resolve().parent)]
from common import BUNDLE, RESULTS, Timings, device_name, git_commit, torch_threads  # noqa: E402 - beside it

COLUMNS = ["date", "commit", "dirty", "device", "threads", "format", "width", "height", "size", "pipeline"]
COLUMNS += ["images", "seconds_per_image", "images_per_s", "speedup_to_old", "mean_abs_diff", "max_abs_diff"]
KEY = ("commit", "dirty", "device", "threads", "format", "width", "height", "size", "pipeline")
PIPELINES = ("old", "new_full_decode", "new", "pil")
FORMATS = ("jpg", "png")


def synthetic_photograph(width: int, height: int, seed: int) -> Image.Image:
    """A full-size RGB image with photograph-like content: a smooth colour field, a dark disc edge (as fundus
    and dermoscopy images have) and sensor-like noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(40, 220, (6, 8, 3)).astype(np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    rows, cols = np.mgrid[0:height, 0:width]
    disc = ((rows - height / 2) ** 2 + (cols - width / 2) ** 2) < (0.48 * height) ** 2
    pixels = field * disc[..., None] + rng.normal(0, 6, field.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def bundle_pipeline(size: int, variant: str) -> Callable[[str], torch.Tensor]:
    """train.yaml's validation preprocessing (``new``), with full decoding, or also MONAI's Resized (``old``)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.yaml"))
    parser["image_size"] = size
    parser["input_normalization"] = None  # values compared on the [-1, 1] scale
    if variant in ("old", "new_full_decode"):
        parser["decode_min_side"] = None
    if variant == "old":
        resize = {"_target_": "Resized", "keys": "image", "spatial_size": [size, size], "mode": "bilinear"}
        parser["base_transforms"][-1] = {**resize, "anti_aliasing": True}
    compose = parser.get_parsed_content("validate#preprocessing")
    return lambda path: torch.as_tensor(compose({"image": path})["image"])


def pil_pipeline(size: int) -> Callable[[str], torch.Tensor]:
    def run(path: str) -> torch.Tensor:
        image = Image.open(path).convert("RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    return run


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Preprocessing speed of full-size images (benchmarks/README.md).")
    parser.add_argument("--width", type=int, default=3000, help="image width in pixels (default 3000)")
    parser.add_argument("--height", type=int, default=2000, help="image height in pixels (default 2000)")
    parser.add_argument("--size", type=int, default=224, help="network input side (default 224, train.yaml's)")
    parser.add_argument("--images", type=int, default=4, help="images per format, each timed once (default 4)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, a data worker's)")
    parser.add_argument("--out", type=Path, default=RESULTS / "preprocessing.csv", help="CSV to append to")
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run: 600x400, one image")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    args = parse_args(argv)
    if args.tiny:
        args.width, args.height, args.images = 600, 400, 1
    with torch_threads(args.threads):
        return measure(args)


def measure(args: argparse.Namespace) -> list[dict[str, str]]:
    commit, dirty = git_commit()
    context = {"commit": commit, "dirty": dirty, "device": device_name(torch.device("cpu"))}
    context |= {"threads": torch.get_num_threads(), "width": args.width, "height": args.height, "size": args.size}
    table = Timings(args.out, COLUMNS, KEY, context)
    pipelines = {name: bundle_pipeline(args.size, name) for name in PIPELINES[:3]} | {"pil": pil_pipeline(args.size)}
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for fmt in FORMATS:
            paths = []
            for i in range(args.images):
                paths.append(os.path.join(folder, f"image{i}.{fmt}"))
                options = {"quality": 90} if fmt == "jpg" else {}
                synthetic_photograph(args.width, args.height, seed=i).save(paths[-1], **options)
            reference = [pipelines["old"](p) for p in paths[:1]]  # also a warm-up of the imports
            seconds_old = None
            for name in PIPELINES:
                ids = {"format": fmt, "pipeline": name}
                if found := table.find(ids):
                    rows.append(found)
                    seconds_old = float(found["seconds_per_image"]) if name == "old" else seconds_old
                    continue
                run = pipelines[name]
                run(paths[0])  # warm-up
                times, outputs = [], []
                for path in paths:
                    start = time.perf_counter()
                    outputs.append(run(path))
                    times.append(time.perf_counter() - start)
                seconds = statistics.median(times)
                seconds_old = seconds if name == "old" else seconds_old
                diff = (outputs[0] - reference[0]).abs()
                row = {**ids, "images": len(paths), "seconds_per_image": seconds, "images_per_s": 1 / seconds}
                row |= {"speedup_to_old": seconds_old / seconds, "mean_abs_diff": float(diff.mean())}
                rows.append(table.add(row | {"max_abs_diff": float(diff.max())}))
                speeds = f"{seconds:.4f} s/image, {1 / seconds:7.1f} images/s, x{seconds_old / seconds:.1f}"
                print(f"{fmt} {name:>16}: {speeds}, mean |diff| {float(diff.mean()):.4f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
