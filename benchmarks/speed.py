"""Speed of DiffMIC relative to its ``basic`` ResNet classifier: inference, the no-wasted-work check, training.

Every network is built from the bundle's own configs (``bundle/configs/train.yaml``, merged with
``configs/small.yaml`` for the small recipe) with ``ConfigParser``; the script only chooses which config ids
to override (image size, width, variant, batch; the trunk depths in ``--tiny`` mode; and, for training, a
list of random batches as the data loader with joint training from the first iteration). Inputs are random:
speed does not depend on the pixels.

One CSV row per measurement is appended to ``--out``. Rows already there for the same commit and device
are skipped, so an interrupted run resumes where it stopped. From the repository root::

    python benchmarks/speed.py --help
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "bundle"), str(Path(__file__).resolve().parent)]
from common import BUNDLE, RESULTS, Timings, device_name, git_commit, torch_threads  # noqa: E402

if TYPE_CHECKING:
    from monai.bundle import ConfigParser

RECIPES = {"paper": ["train"], "small": ["train", "small"]}  # config files of each recipe, merged in order
SAMPLES = (1, 10)  # reverse chains per image measured (the 1 and 10)
CHECK_SAMPLES = 10  # samples of the no-wasted-work check
CHECK_TOLERANCE = 1.2  # full inference may take at most this times (backbones + K denoiser steps)
TINY_DEPTH = 10  # ResNet depth of every trunk in --tiny mode
MIB = 2**20

COLUMNS = ["date", "commit", "dirty", "device", "threads", "measurement", "recipe", "depths", "num_classes"]
COLUMNS += ["image_size", "width", "batch", "steps", "samples", "repeats", "seconds", "images_per_s"]
COLUMNS += ["ratio_to_basic", "peak_mem_mb", "base_mem_mb", "mem_method", "check_full_s", "check_backbones_s"]
COLUMNS += ["check_step_s", "check_bound_s", "check_ratio", "check_pass", "notes"]
# a measurement is identified by these columns: a later run with the same values skips it
KEY = ("commit", "device", "threads", "measurement", "recipe", "depths", "num_classes", "image_size", "width")
KEY += ("batch", "steps", "samples")


class Setting(NamedTuple):
    """One point of the grid: a recipe and the config ids the script overrides."""

    recipe: str
    image_size: int
    width: int
    batch: int | None  # None: the recipe's batch_size
    depth: int | None  # None: the recipe's trunk depths
    num_classes: int | None  # None: the recipe's class_names


# ---------------------------------------------------------------- configs and networks


def recipe_files(recipe: str) -> list[str]:
    """The paths of the bundle config files of a recipe (``paper`` or ``small``), in merge order."""
    return [str(BUNDLE / "configs" / f"{name}.yaml") for name in RECIPES[recipe]]


def recipe_values(recipe: str) -> dict[str, Any]:
    """The raw (unparsed) top-level config values of a recipe, to read its defaults."""
    from monai.bundle import ConfigParser

    return ConfigParser.load_config_files(recipe_files(recipe))


def choose_recipe(size: int, recipe: str) -> str:
    """``recipe``, or for ``auto`` the recipe whose own image_size is nearest ``size`` (its stems and ROIs suit
    that size)."""
    if recipe != "auto":
        return recipe
    return min(RECIPES, key=lambda r: abs(int(recipe_values(r)["image_size"]) - size))


def make_parser(
    setting: Setting, variant: str, device: torch.device, extra: dict[str, Any] | None = None, **globals_: Any
) -> ConfigParser:
    """The bundle's config, not yet parsed, with the setting's and ``extra`` overrides; ``globals_``: objects the
    overrides' expressions refer to."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(globals=globals_ or None)
    parser.read_config(recipe_files(setting.recipe))
    overrides: dict[str, Any] = {
        "image_size": setting.image_size,
        "width": setting.width,
        "variant": variant,
        "bundle_root": str(BUNDLE),
        "device": f"$torch.device('{device}')",
        "dcg_pretrained": None,  # speed does not depend on the weights: no ImageNet download
    }
    if setting.batch is not None:
        overrides["batch_size"] = setting.batch
    if setting.depth is not None:
        overrides.update(encoder_depth=setting.depth, global_depth=setting.depth, local_depth=setting.depth)
    if setting.num_classes is not None:
        overrides["class_names"] = [f"class{i}" for i in range(setting.num_classes)]
    overrides.update(extra or {})
    for key, value in overrides.items():
        parser[key] = value
    return parser


def describe(setting: Setting, device: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a setting means, read back from the config (so that defaults come from the recipe): the identifying
    columns of its rows; and ``seed``, ``in_channels``, ``steps`` (K of the configured sampler), ``noise_draws``
    and ``mmd_weight`` (of joint training)."""
    parser = make_parser(setting, "full", device)
    columns = {
        "recipe": setting.recipe,
        "depths": f"{parser['encoder_depth']}/{parser['global_depth']}/{parser['local_depth']}",
        "num_classes": int(parser.get_parsed_content("num_classes")),
        "image_size": int(parser["image_size"]),
        "width": int(parser["width"]),
        "batch": int(parser["batch_size"]),
    }
    info = {
        "seed": int(parser["seed"]),
        "in_channels": int(parser["in_channels"]),
        "steps": reverse_steps(parser),
        "noise_draws": int(parser["noise_draws"]),
        "mmd_weight": float(parser.get_parsed_content("train#diffusion_loss#mmd_weight")),
    }
    return columns, info


def build_network(setting: Setting, variant: str, device: torch.device) -> torch.nn.Module:
    """``network_def`` of the config, seeded with the config's seed, on ``device``, in eval mode."""
    parser = make_parser(setting, variant, device)
    torch.manual_seed(int(parser["seed"]))
    return parser.get_parsed_content("network_def").to(device).eval()


def random_batch(columns: dict[str, Any], info: dict[str, Any], device: torch.device, index: int = 0) -> dict:
    """Random ``image`` (B, C, H, W; standard normal, like the [-1, 1] inputs in scale) and ``label`` (B,) of the
    ``index``-th batch of the setting's seeded sequence."""
    generator = torch.Generator().manual_seed(info["seed"] * 1000 + index)
    batch, size = columns["batch"], columns["image_size"]
    image = torch.randn((batch, info["in_channels"], size, size), generator=generator)
    label = torch.randint(0, columns["num_classes"], (batch,), generator=generator)
    return {"image": image.to(device), "label": label.to(device)}


def reverse_steps(parser: ConfigParser) -> int:
    """K, the reverse steps the configured chain takes (its scheduler and diffusion built from the config)."""
    from scripts.diffusion import PriorShiftedDiffusion
    from scripts.scheduler import ReverseScheduler

    diffusion = PriorShiftedDiffusion(**parser.get_parsed_content("network_def#diffusion"))
    return len(ReverseScheduler(diffusion, **parser.get_parsed_content("network_def#scheduler")).timesteps)


# ---------------------------------------------------------------- timing and memory


def synchronize(device: torch.device) -> None:
    """Waits for queued kernels, so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds of each of ``repeats`` calls of ``fn`` (one batch's work; the device synchronised around each)
    after ``warmup`` untimed ones (allocation, kernel selection)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def resident_mb(field: str) -> float:
    """``VmRSS`` (the resident memory now) or ``VmHWM`` (its high-water mark) of this process in MiB; the peak by
    ru_maxrss where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / MIB if sys.platform == "darwin" else kib / 1024  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: torch.device) -> tuple[float, str]:
    """Frees what earlier measurements left and restarts the peak-memory counter.

    On CUDA the counter is ``torch.cuda.max_memory_allocated``. On a CPU it is the process's resident
    high-water mark (ru_maxrss, read as VmHWM), which Linux resets on writing 5 to /proc/self/clear_refs;
    where that fails the mark stays process-wide (the caller measures ``basic`` before ``full``). Returns the
    memory in use now (MiB, the peak's floor) and how the peak is measured.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device) / MIB, "cuda max_memory_allocated reset per measurement"
    try:  # return freed heap pages to the system, or the next peak starts from the last one's leftovers
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        method = "peak RSS (ru_maxrss/VmHWM) reset per measurement"
    except OSError:
        method = "peak RSS (ru_maxrss) process-wide; basic measured first"
    return resident_mb("VmRSS"), method


def peak_memory(device: torch.device) -> float:
    """The peak memory in MiB since :func:`reset_peak_memory`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB
    return resident_mb("VmHWM")


# ---------------------------------------------------------------- measurements


class Benchmark:
    """Runs the measurements of a grid of settings and records them: the median of ``repeats`` timed batches
    after ``warmup`` untimed ones."""

    def __init__(self, results: Timings, device: torch.device, warmup: int, repeats: int) -> None:
        self.results = results
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self.rows: list[dict[str, str]] = []

    def measure(
        self,
        ids: dict[str, Any],
        make: Callable[[], Callable[[], list[float]]],
        basic: dict[str, str] | None = None,
        notes: str = "",
    ) -> dict[str, str]:
        """One measurement (``ids``: its identifying columns), or its earlier row.

        ``make`` builds what is measured (only when the row is missing) and returns a call giving the timed
        seconds per batch; ``basic`` is the row this one is compared to (None: it is the basic row itself).
        """

        def values() -> dict[str, Any]:
            measure = make()
            base, method = reset_peak_memory(self.device)
            seconds = statistics.median(measure())
            peak = peak_memory(self.device)
            del measure  # frees what only this measurement held (the basic network) before the next one
            ips = ids["batch"] / seconds
            print(f"  {ids['measurement']:<22} {seconds:9.4f} s/batch  {ips:10.1f} images/s", flush=True)
            ratio = 1.0 if basic is None else ips / float(basic["images_per_s"])
            values = {"seconds": seconds, "images_per_s": ips, "ratio_to_basic": ratio, "peak_mem_mb": peak}
            return values | {"base_mem_mb": base, "mem_method": method, "repeats": self.repeats, "notes": notes}

        return self.record(ids, values)

    def record(self, ids: dict[str, Any], values: Callable[[], dict[str, Any]]) -> dict[str, str]:
        """The earlier row of ``ids``, or a new one with the ``values`` computed now."""
        row = self.results.find(ids) or self.results.add(ids | values())
        self.rows.append(row)
        return row

    def timer(self, fn: Callable[..., Any], *args: Any) -> Callable[[], list[float]]:
        """A measurement call that times ``fn(*args)`` (under no_grad) with this benchmark's warm-up and repeats."""

        def run() -> list[float]:
            with torch.no_grad():
                return timed(lambda: fn(*args), self.device, self.warmup, self.repeats)

        return run

    def inference(self, setting: Setting, columns: dict[str, Any], info: dict[str, Any]) -> None:
        """basic, DCG alone, full with 1 and 10 samples, the backbones, one denoiser step, and the check
        (``columns``, ``info``: the setting's, from :func:`describe`)."""
        from scripts.inferer import DiffMICInferer

        batch, steps = columns["batch"], info["steps"]
        images = random_batch(columns, info, self.device)["image"]
        ids = [str(i) for i in range(batch)]
        full: list[torch.nn.Module] = []

        def network(variant: str) -> torch.nn.Module:
            if variant == "basic":  # built per use: freed once its measurement ends
                return build_network(setting, variant, self.device)
            if not full:  # shared by the full-network rows, freed after them
                full.append(build_network(setting, variant, self.device))
            return full[0]

        def predict(variant: str, samples: int) -> Callable[[], list[float]]:
            return self.timer(
                DiffMICInferer(seed=info["seed"], num_samples=samples).outputs, images, network(variant), ids
            )

        def backbones() -> Callable[[], list[float]]:
            net = network("full")
            return self.timer(lambda: (net.dcg(images), net.features(images)))

        def denoiser_step() -> Callable[[], list[float]]:
            net = network("full")
            rows = batch * CHECK_SAMPLES  # the rows one step of the check's batched chains has
            generator = torch.Generator().manual_seed(info["seed"])
            features = torch.randn(rows, columns["width"], generator=generator).to(self.device)
            y = torch.randn(rows, columns["num_classes"], generator=generator).to(self.device)
            prior = torch.softmax(torch.randn(rows, columns["num_classes"], generator=generator), 1).to(self.device)
            t = torch.full((rows,), net.diffusion.num_train_timesteps - 1, dtype=torch.long, device=self.device)
            return self.timer(net.denoise, features, y, prior, t)

        def ids_of(measurement: str, steps: int = 0, samples: int = 0) -> dict[str, Any]:
            return {**columns, "measurement": measurement, "steps": steps, "samples": samples}

        basic = self.measure(ids_of("infer_basic", samples=1), lambda: predict("basic", 1))
        self.measure(ids_of("infer_dcg"), lambda: self.timer(network("full").prior, images), basic)
        chains = {}
        for samples in SAMPLES:
            chains[samples] = self.measure(
                ids_of(f"infer_full_s{samples}", steps, samples), lambda s=samples: predict("full", s), basic
            )
        parts = self.measure(ids_of("infer_backbones"), backbones, basic)
        step_ids = ids_of("infer_denoiser_step", 1, CHECK_SAMPLES)
        step = self.measure(step_ids, denoiser_step, basic, notes=f"{batch * CHECK_SAMPLES} rows")
        full.clear()  # frees the full network before training
        self.check(columns, steps, chains[CHECK_SAMPLES], parts, step, basic)

    def check(self, columns: dict[str, Any], steps: int, chain: dict, parts: dict, step: dict, basic: dict) -> None:
        """The no-wasted-work row: full with 10 samples (``chain``) against the backbones (``parts``) + K = ``steps``
        single denoiser steps (``step``: one on batch x samples rows)."""

        def values() -> dict[str, Any]:
            full_s, ips = float(chain["seconds"]), float(chain["images_per_s"])
            bound = float(parts["seconds"]) + steps * float(step["seconds"])
            ratio = full_s / bound
            print(f"  {'check_no_wasted_work':<22} ratio {ratio:.3f} (pass: {ratio <= CHECK_TOLERANCE})", flush=True)
            values = {"seconds": full_s, "images_per_s": ips, "ratio_to_basic": ips / float(basic["images_per_s"])}
            values |= {"check_full_s": full_s, "check_backbones_s": float(parts["seconds"])}
            values |= {"check_step_s": float(step["seconds"]), "check_bound_s": bound, "check_ratio": ratio}
            notes = f"pass: full <= {CHECK_TOLERANCE} x (backbones + {steps} x step)"
            return values | {"check_pass": ratio <= CHECK_TOLERANCE, "repeats": self.repeats, "notes": notes}

        ids = {**columns, "measurement": "check_no_wasted_work", "steps": steps, "samples": CHECK_SAMPLES}
        self.record(ids, values)

    def training(self, setting: Setting, columns: dict[str, Any], info: dict[str, Any]) -> None:
        """Joint training iterations of ``full`` and cross-entropy iterations of ``basic``, basic first."""
        ids = {**columns, "steps": 0, "samples": 0}
        notes = f"joint: DCG + denoiser steps; noise_draws={info['noise_draws']}; mmd_weight={info['mmd_weight']}"
        basic = self.measure(
            ids | {"measurement": "train_basic"}, lambda: self.trainer(setting, "basic", columns, info)
        )
        full = ids | {"measurement": "train_full"}
        self.measure(full, lambda: self.trainer(setting, "full", columns, info), basic, notes=notes)

    def trainer(
        self, setting: Setting, variant: str, columns: dict[str, Any], info: dict[str, Any]
    ) -> Callable[[], list[float]]:
        """``train#trainer`` of the config on in-memory random batches; returns the call that runs it.

        The data loader is a list of ``warmup + repeats`` batches, the handlers (validation, checkpoints,
        logging) are left out, and there is no DCG warm-up, so every iteration is a joint one. The call returns
        the seconds of the iterations after the warm-up.
        """
        from ignite.engine import Events

        from scripts.engine import scalar_terms

        batches = [random_batch(columns, info, self.device, i) for i in range(self.warmup + self.repeats)]
        extra = {
            "train#dataloader": "$speed_batches",
            "train#handlers": [],
            "train#loss#weight": None,  # its expression reads the dataset, which is not there
            "max_epochs": 1,
            "warmup_epochs": 0,
        }
        parser = make_parser(setting, variant, self.device, extra, speed_batches=batches)
        torch.manual_seed(info["seed"])
        trainer = parser.get_parsed_content("train#trainer")
        times: list[float] = []

        @trainer.on(Events.ITERATION_STARTED)
        def start(_: Any) -> None:
            synchronize(self.device)
            times.append(time.perf_counter())

        @trainer.on(Events.ITERATION_COMPLETED)
        def stop(_: Any) -> None:
            synchronize(self.device)
            times[-1] = time.perf_counter() - times[-1]

        def run() -> list[float]:
            trainer.run()
            if variant != "basic" and "loss_noise" not in scalar_terms(trainer.state.output):
                raise RuntimeError("the trainer did not take a joint step")
            return times[self.warmup :]

        return run


# ---------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; defaults left as None are filled by :func:`main` (from the configs or --tiny)."""
    parser = argparse.ArgumentParser(
        description="Speed of DiffMIC relative to its basic ResNet classifier (see benchmarks/README.md).",
    )
    parser.add_argument("--sizes", type=int, nargs="+", help="image sides in pixels (default: 28 64 224)")
    parser.add_argument(
        "--widths", type=int, nargs="+", help="denoiser widths (default: the small and paper recipes', 512 6144)"
    )
    parser.add_argument("--batch", type=int, help="images per batch (default: the recipe's batch_size, 32)")
    parser.add_argument("--repeats", type=int, help="timed batches per measurement (default: 10 on CUDA, 3 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed batches first (default: 3 on CUDA, 1 on CPU)")
    parser.add_argument(
        "--recipe",
        choices=["auto", *RECIPES],
        default="auto",
        help="base config (default: auto, the recipe whose image_size is nearest each size: small for 28, 64 px; "
        "paper for 224 px)",
    )
    parser.add_argument("--num-classes", type=int, help="classes (default: the recipe's class_names, 7)")
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cuda or cpu (default: cuda if available)",
    )
    parser.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's, the core count)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "speed.csv",
        help="CSV to append to (default: benchmarks/results/speed.csv)",
    )
    parser.add_argument("--no-train", action="store_true", help="skip the training measurements")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help=f"a seconds-long smoke run: size 28, width 32, batch 4, depth-{TINY_DEPTH} trunks, 1 warm-up, 1 repeat "
        "(explicit flags still win)",
    )
    return parser.parse_args(argv)


def format_table(rows: list[dict[str, str]]) -> str:
    """A fixed-width table of rows, for the terminal."""
    header = ["measurement", "recipe", "px", "width", "batch", "K", "S", "s/batch", "images/s", "x basic", "peak MiB"]
    header += ["check"]
    lines = []
    for r in rows:
        check = (
            f"{float(r['check_ratio']):.3f} {'pass' if r['check_pass'] == 'True' else 'FAIL'}"
            if r["check_ratio"]
            else ""
        )
        peak = f"{float(r['peak_mem_mb']):.0f}" if r["peak_mem_mb"] else ""
        lines.append(
            [r["measurement"], r["recipe"], r["image_size"], r["width"], r["batch"], r["steps"], r["samples"]]
            + [f"{float(r['seconds']):.4f}", f"{float(r['images_per_s']):.1f}", f"{float(r['ratio_to_basic']):.3f}"]
            + [peak, check]
        )
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]
    text = [" ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=True)) for line in [header, *lines]]
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> list[dict[str, str]]:
    """Runs the benchmark; returns the rows of the measurements asked for, measured now or read from the CSV."""
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.tiny:  # explicit flags still win
        args.sizes = args.sizes or [28]
        args.widths = args.widths or [32]
        args.batch = args.batch or 4
        args.repeats = args.repeats or 1
        args.warmup = 1 if args.warmup is None else args.warmup
    sizes = args.sizes or [28, 64, 224]
    widths = args.widths or sorted({int(recipe_values(r)["width"]) for r in RECIPES})
    repeats = args.repeats or (10 if device.type == "cuda" else 3)
    warmup = (3 if device.type == "cuda" else 1) if args.warmup is None else args.warmup
    with torch_threads(args.threads):
        gc.collect()
        gc.freeze()  # the imported modules' objects stay out of the collections between measurements (seconds each)
        try:
            return run_grid(args, device, sizes, widths, warmup, repeats)
        finally:
            gc.unfreeze()


def run_grid(
    args: argparse.Namespace, device: torch.device, sizes: list[int], widths: list[int], warmup: int, repeats: int
) -> list[dict[str, str]]:
    """Measures every size x width setting, inference then training, prints the table and returns the rows."""
    commit, dirty = git_commit()
    context = {"commit": commit, "dirty": dirty, "device": device_name(device), "threads": torch.get_num_threads()}
    results = Timings(args.out, COLUMNS, KEY, context)
    bench = Benchmark(results, device, warmup, repeats)
    print(f"{context['device']}, {context['threads']} threads, commit {commit}{' (dirty)' if dirty else ''}")
    print(f"writing {args.out}", flush=True)
    start = time.perf_counter()
    for size in sizes:
        recipe = choose_recipe(size, args.recipe)
        for width in widths:
            depth = TINY_DEPTH if args.tiny else None
            setting = Setting(recipe, size, width, args.batch, depth, args.num_classes)
            columns, info = describe(setting, device)
            print(f"{recipe} recipe, {size} px, width {width}, batch {columns['batch']}:", flush=True)
            bench.inference(setting, columns, info)
            if not args.no_train:
                bench.training(setting, columns, info)
    print(f"\n{format_table(bench.rows)}\n\n{len(bench.rows)} rows in {time.perf_counter() - start:.1f} s", flush=True)
    return bench.rows


if __name__ == "__main__":
    main()
