"""The bundle's options: their types and ranges, and one check of the merged configuration before any work.

``python -m monai.bundle run`` hands command-line values to the config as Python Fire parsed them:
``--overwrite false`` arrives as the string ``'false'``, which is true, and ``--download_md5 None`` is
dropped by MONAI. :func:`check_config`, the first step of every workflow's ``initialize``, converts such
values to their declared types in the parser's config and lists every problem in one error: unknown ids
(``--max_epoch``), values outside their type, choices or range, ``num_classes`` against ``class_names``,
a missing device, folders that cannot be written, and settings that would train nothing.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from .variants import VARIANTS

__all__ = ["Option", "OPTIONS", "ConfigError", "check_config", "as_bool", "install_error_summary"]

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TRUE, FALSE, NULL = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("null", "none", "~", "")
MONAI_IDS = {"imports", "_meta_", "_requires_", "initialize", "run", "finalize"}  # MONAI's own top-level ids
REFERENCE = re.compile(r"[@%]([A-Za-z_]\w*)")  # the top-level id of an @id, @id#key or %id reference
METRICS = ("macro_f1", "accuracy", "balanced_accuracy", "kappa", "auc")
TRAINING_RUNS = ("training", "run")  # run ids that train (train.yaml's `run` is `training`)


class ConfigError(ValueError):
    """A configuration that cannot run as given; the message lists every problem and what to change."""


@dataclass(frozen=True)
class Option:
    """A user-facing option: ``kind`` is ``bool``, ``int``, ``float``, ``str``, ``device`` or ``names`` (a list of
    ``choices``); ``choices`` restricts the values; ``low``/``high`` bound numbers (inclusive, or exclusive with
    ``open_low``); ``nullable`` admits null."""

    kind: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    nullable: bool = False

    def convert(self, name: str, value: Any) -> tuple[Any, str | None]:
        """``value`` as this option's type, and the problem with it (None if it is fine)."""
        if isinstance(value, str) and value.startswith("$"):
            return value, None  # an expression: its value is known after evaluation
        if self.nullable and (value is None or isinstance(value, str) and value.strip().lower() in NULL):
            return None, None
        converters = {"bool": _to_bool, "int": _to_int, "float": _to_float, "str": _to_str, "device": _to_device}
        converted = {**converters, "names": _to_names}[self.kind](value)
        if converted is _INVALID:
            expected = {"bool": "true or false", "device": "cpu, cuda or cuda:N"}.get(self.kind, f"a {self.kind}")
            return value, f"{name}: {value!r} is not {expected}" + (" (or null)" if self.nullable else "")
        if self.kind == "names":  # without choices: any names, e.g. class names or glob patterns
            unknown = [n for n in converted if self.choices and n not in self.choices]
            if unknown or self.choices and not converted:
                return value, f"{name}: {value!r} must list some of {list(self.choices)}"
            return converted, None
        if self.choices and converted not in self.choices:
            close = difflib.get_close_matches(str(converted), [str(c) for c in self.choices], 1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return value, f"{name}: {value!r} is not one of {list(self.choices)}{hint}"
        if self.kind in ("int", "float") and not self._in_range(converted):
            return value, f"{name}: {converted!r} is outside {self._range()}"
        return converted, None

    def _in_range(self, number: float) -> bool:
        above = self.low is None or (number > self.low if self.open_low else number >= self.low)
        return above and (self.high is None or number <= self.high)

    def _range(self) -> str:
        low = "(-inf" if self.low is None else ("(" if self.open_low else "[") + f"{self.low:g}"
        return f"{low}, {'inf)' if self.high is None else f'{self.high:g}]'}"


_INVALID = object()


def as_bool(value: Any) -> bool:
    """``value`` as a boolean: true/false, yes/no, on/off, 1/0 in any case; anything else is an error."""
    converted = _to_bool(value)
    if converted is _INVALID:
        raise ConfigError(f"{value!r} is not true or false")
    return converted


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if isinstance(value, str) else None
    return True if text in TRUE else False if text in FALSE else _INVALID


def _to_int(value: Any) -> Any:
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    try:
        return int(str(value).strip()) if isinstance(value, str) else _INVALID
    except ValueError:
        return _INVALID


def _to_float(value: Any) -> Any:
    if isinstance(value, bool):
        return _INVALID
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value.strip()) if isinstance(value, str) else _INVALID
    except ValueError:
        return _INVALID


def _to_str(value: Any) -> Any:
    return value if isinstance(value, str) else str(value) if isinstance(value, int | float) else _INVALID


def _to_names(value: Any) -> Any:
    """A list of names from a list, or from the command line's ``fused``, ``global,fused`` or ``[global, fused]``
    (Fire hands the first as a string, the second as a tuple, the last as a list); numbers are names too."""
    if isinstance(value, list | tuple) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    if isinstance(value, str):
        return [n.strip().strip("'\"") for n in value.strip().strip("[]").split(",") if n.strip()]
    return _INVALID


def _to_device(value: Any) -> Any:
    if isinstance(value, torch.device):
        return value
    try:
        return torch.device(value.strip()) if isinstance(value, str) else _INVALID
    except (RuntimeError, ValueError):
        return _INVALID


def _positive(kind: str = "int", **kwargs) -> Option:
    return Option(kind, low=0, open_low=True, **kwargs) if kind == "float" else Option(kind, low=1, **kwargs)


def _fraction(**kwargs) -> Option:
    return Option("float", low=0.0, high=1.0, **kwargs)


FLAG = Option("bool")
COUNT = Option("int", low=0)
DEPTH = Option("int", choices=(10, 18, 34, 50, 101, 152, 200))
PATH = Option("str", nullable=True)

OPTIONS: dict[str, Option] = {
    "variant": Option("str", choices=tuple(VARIANTS)),
    "image_size": Option("int", low=8),
    "batch_size": _positive(),
    "max_epochs": _positive(),
    "warmup_epochs": COUNT,
    "dcg_epochs": Option("int", low=1, nullable=True),
    "prior_mode": Option("str", choices=("train", "eval")),
    "prior_folds": COUNT,
    "val_interval": _positive(),
    "seed": COUNT,
    "rand_prob": _fraction(),
    "rotate_range": Option("float", low=0.0, high=3.1416),
    "lr_denoiser": _positive("float"),
    "lr_dcg": _positive("float"),
    "lr_warmup_epochs": COUNT,
    "weight_decay": Option("float", low=0.0),
    "grad_clip": _positive("float", nullable=True),
    "amp": FLAG,
    "ema_decay": Option("float", low=0.0, high=1.0, nullable=True),
    "noise_draws": _positive(),
    "mmd_weight": Option("float", low=0.0),
    "prior_error_weight": Option("float", low=0.0),
    "dcg_amsgrad": FLAG,
    "dcg_loss_terms": Option("names", choices=("global", "local", "fused")),
    "num_train_timesteps": Option("int", low=2),
    "beta_start": Option("float", low=0.0, high=1.0, open_low=True),
    "beta_end": Option("float", low=0.0, high=1.0, open_low=True),
    "prediction_type": Option("str", choices=("epsilon", "sample")),
    "sampler_name": Option("str", choices=("ddim", "ddpm", "truncated")),
    "sampling_steps": _positive(),
    "sampling_eta": Option("float", low=0.0),
    "num_samples": _positive(),
    "width": _positive(),
    "encoder_depth": DEPTH,
    "global_depth": DEPTH,
    "local_depth": DEPTH,
    "num_rois": _positive(),
    "roi_size": _positive(),
    "attention_dim": _positive(),
    "feature_norm": FLAG,
    "class_weighted_loss": FLAG,
    "class_balanced_sampling": FLAG,
    "cache_rate": _fraction(),
    "num_workers": COUNT,
    "progress_bar": FLAG,
    "on_bad_image": Option("str", choices=("error", "skip")),
    "on_nonfinite": Option("str", choices=("stop", "skip")),
    "resume": FLAG,
    "resume_from": PATH,
    "overwrite": FLAG,
    "encoder_weights": PATH,
    "dcg_weights": PATH,
    "weights_format": Option("str", choices=("torchvision", "monai")),
    "dcg_pretrained": Option("str", choices=("imagenet",), nullable=True),
    "input_normalization": Option("str", choices=("imagenet",), nullable=True),
    "decode_min_side": Option("int", low=1, nullable=True),
    "pretrained_cache": Option("str"),
    "device": Option("device"),
    "num_classes": Option("int", low=2),
    "in_channels": Option("int", choices=(1, 3)),
    "val_fraction": Option("float", low=0.0, high=1.0, open_low=True),
    "key_metric_name": Option("str", choices=METRICS),
    "ordinal": FLAG,
    "download_url": PATH,
    "download_md5": PATH,
    "eval_split": Option("str", choices=("train", "validation", "test")),
    "save_saliency": FLAG,
    "tsne_panels": Option("int", low=2),
    "tsne_max_images": Option("int", low=2),
    "datalist": PATH,
    "class_names": Option("names"),
    "test_fraction": Option("float", low=0.0, high=1.0, open_low=True),
    "split_seed": COUNT,
    "exclude": Option("names"),
    "labels_csv": Option("str"),
    "datalist_json": Option("str"),
    "split_file": PATH,
    "ckpt_path": Option("str"),
}


def check_config() -> None:
    """Checks the configuration of the running workflow before it reads data or writes a file (the first
    step of ``initialize``): converts command-line strings to each option's type in place, then raises one
    :class:`ConfigError` listing every problem. Called from a config expression: it finds the running
    ``ConfigParser`` (and the workflow's run id) among its callers."""
    install_error_summary()
    parser, run_id = _running_parser()
    config = parser.get()
    problems = _unknown_ids(config)
    changed, invalid = _none_from_command_line(config), set()
    for name, option in OPTIONS.items():
        if name in config:
            value, problem = option.convert(name, config[name])
            if problem:
                problems.append(problem)
                invalid.add(name)
            elif type(value) is not type(config[name]) or value != config[name]:
                config[name], changed = value, True
    if changed:
        parser.ref_resolver.reset()  # the next expression re-parses the converted values
    problems += _relations(parser, {k: v for k, v in config.items() if k not in invalid}, run_id)
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(
            f"{len(problems)} problem(s) in the configuration (the configs and the command line's --id value "
            f"pairs); nothing was read or written:\n  {lines}"
        )


def _running_parser():
    """The ConfigParser evaluating the caller's expression, and the run id of its ConfigWorkflow (or None)."""
    from monai.bundle import ConfigParser, ConfigWorkflow

    parser, run_id = None, None
    frame = inspect.currentframe()
    while frame is not None:
        owner = frame.f_locals.get("self")
        if parser is None and isinstance(owner, ConfigParser):
            parser = owner
        if isinstance(owner, ConfigWorkflow):
            run_id = owner.run_id
            break
        frame = frame.f_back
    if parser is None:
        raise RuntimeError("check_config() runs from a bundle config expression (initialize), not directly")
    return parser, run_id


def _known_ids() -> set[str]:
    """Every top-level id of the bundle's config files and tracking settings, and MONAI's own ids."""
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    known = set(OPTIONS) | MONAI_IDS | set(DEFAULT_MLFLOW_SETTINGS["configs"])
    for path in sorted(CONFIGS.rglob("*.yaml")):
        content = yaml.safe_load(path.read_text()) or {}
        known |= set(content) | set(content.get("configs", {}) if path.name == "mlflow.yaml" else {})
    return known


def _unknown_ids(config: dict) -> list[str]:
    """Ids that no bundle config defines and nothing reads: a misspelt override (``--max_epoch 3``) does
    nothing, silently. A user's own ids that some expression reads, and runnable lists, are fine."""
    read = {name for text in _strings(config) for name in REFERENCE.findall(text)}
    known = _known_ids()
    problems = []
    for name, value in config.items():
        if name in known or name in read or _is_runnable(value):
            continue
        close = difflib.get_close_matches(name, sorted(n for n in known if not n.startswith("_")), 1)
        hint = f": did you mean --{close[0]}?" if close else ": check its spelling against configs/train.yaml"
        problems.append(f"{name}: no config defines or reads this id, so it would change nothing{hint}")
    return problems


def _strings(value: Any):
    """Every string in a nested config, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _is_runnable(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, str) and v.startswith("$") for v in items)


def _none_from_command_line(config: dict) -> bool:
    """Applies ``--id None`` pairs of the ``monai.bundle run`` command line, which MONAI drops; True if any."""
    if not sys.argv or not sys.argv[0].replace(os.sep, "/").endswith("monai/bundle/__main__.py"):
        return False
    args, changed = sys.argv[1:], False
    for i, arg in enumerate(args):
        if not arg.startswith("--"):
            continue
        name, separated, value = arg[2:].partition("=")
        if not separated:
            value = args[i + 1] if i + 1 < len(args) else ""
        if name in OPTIONS and OPTIONS[name].nullable and value == "None" and config.get(name) is not None:
            config[name], changed = None, True
    return changed


def _relations(parser, config: dict, run_id: str | None) -> list[str]:
    """Problems between options, and with the device and the output folders (options already converted)."""
    problems = []

    def value(name: str) -> Any:
        try:
            return parser.get_parsed_content(name)
        except Exception as error:  # noqa: BLE001 - reported with the other problems
            cause = error.__cause__ or error
            problems.append(f"{name}: cannot be evaluated ({type(cause).__name__}: {cause})")
            return None

    if "class_names" in config and "num_classes" in config:
        given = value("class_names")
        names, count = list(given or []), value("num_classes") if given is not None else None
        if given is not None and (len(set(names)) < 2 or len(set(names)) != len(names)):
            problems.append(f"class_names: {names} must name at least 2 classes, each once")
        if isinstance(count, int) and count != len(names):
            problems.append(
                f"num_classes: {count} does not match the {len(names)} class_names {names}; set class_names "
                "(num_classes follows from it), or give both consistently"
            )
    if "device" in config:
        problems += _device_problem(value("device"))
    betas = config.get("beta_start"), config.get("beta_end")
    if all(isinstance(b, float) for b in betas) and not betas[0] < betas[1]:
        problems.append(f"beta_start ({betas[0]}) must be below beta_end ({betas[1]})")
    steps, timesteps = config.get("sampling_steps"), config.get("num_train_timesteps")
    if isinstance(steps, int) and isinstance(timesteps, int) and steps > timesteps:
        problems.append(f"sampling_steps ({steps}) cannot exceed num_train_timesteps ({timesteps})")
    training = "train" in config and run_id in TRAINING_RUNS
    if training:
        problems += _training_problems(config)
    folders = ["output_dir"] + (["model_dir"] if training else [])
    for name in folders:
        folder = value(name) if name in config else None
        if folder is not None:
            problems += _folder_problem(name, str(folder))
    return problems


def _training_problems(config: dict) -> list[str]:
    problems = []
    epochs, warmup = config.get("max_epochs"), config.get("warmup_epochs")
    diffusion = VARIANTS.get(config.get("variant"), VARIANTS["full"]).use_diffusion
    if diffusion and isinstance(epochs, int) and isinstance(warmup, int) and epochs <= warmup:
        problems.append(
            f"max_epochs ({epochs}) must exceed warmup_epochs ({warmup}): validation, model selection and "
            f"model.pt start after the DCG warm-up; raise --max_epochs or lower --warmup_epochs"
        )
    dcg_epochs = config.get("dcg_epochs")
    if isinstance(dcg_epochs, int) and isinstance(warmup, int) and dcg_epochs < warmup:
        problems.append(f"dcg_epochs ({dcg_epochs}) must be at least warmup_epochs ({warmup}), or null")
    if config.get("prior_folds") == 1:
        problems.append("prior_folds: 1 fold would leave its DCG copy no image to train on; use 0 (off) or 2 or more")
    if isinstance(config.get("batch_size"), int) and config["batch_size"] < 2:
        problems.append("batch_size: training needs at least 2 images per batch (BatchNorm); use 2 or more")
    if config.get("resume") and config.get("overwrite"):
        problems.append("resume and overwrite are both true: choose one (resume continues, overwrite restarts)")
    if config.get("key_metric_name") == "kappa" and "ordinal" in config and not config["ordinal"]:
        problems.append(
            "key_metric_name kappa (quadratic weighted) needs ordered grades: set --ordinal true if the classes "
            "are grades in class_names' order, else choose macro_f1, accuracy, balanced_accuracy or auc"
        )
    return problems


def _device_problem(device: Any) -> list[str]:
    if not isinstance(device, torch.device):
        return [f"device: {device!r} is not a torch.device (cpu, cuda or cuda:N)"]
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return [f"device: {device} was asked for, but this machine has no CUDA GPU; use --device cpu"]
        if device.index is not None and device.index >= count:
            return [f"device: {device} does not exist; this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})"]
    elif device.type not in ("cpu", "mps"):
        return [f"device: {device} is not supported; use cpu or cuda"]
    return []


def _folder_problem(name: str, folder: str) -> list[str]:
    """Why ``folder`` cannot be created or written, naming it and what to do (empty if it can)."""
    path = os.path.abspath(folder)
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return [f"{name}: {folder} cannot be created: {existing} is a file, not a folder; choose another --{name}"]
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is read-only" if existing == path else f"cannot be created: {existing} is read-only"
        return [f"{name}: {folder} {what}; choose a writable --{name}"]
    return []


def install_error_summary() -> None:
    """Makes an uncaught error print its root cause last, after the traceback: MONAI wraps every error of a
    config expression in ``RuntimeError: Failed to evaluate ...``, which buries the sentence that matters."""
    if getattr(sys.excepthook, "diffmic_summary", False):
        return
    previous = sys.excepthook

    def hook(kind, error, trace):
        previous(kind, error, trace)
        root = error
        while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
            root = root.__cause__ or root.__context__
        if root is not error:
            summary = "".join(traceback.format_exception_only(type(root), root)).rstrip()
            print(f"\nError (the cause above, in short):\n{summary}", file=sys.stderr, flush=True)

    hook.diffmic_summary = True
    sys.excepthook = hook
