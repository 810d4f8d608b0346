"""What the benchmark scripts share: paths, resumable CSVs, the stamp of a row, and the named settings.

benchmarks/ is not a package: each script puts this folder on ``sys.path`` before ``import common``, so that
``python benchmarks/X.py`` and the tests' loading of a script by its path both find it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundle"
RESULTS = REPO / "benchmarks" / "results"
SETTINGS = REPO / "benchmarks" / "settings"  # <name>.yaml: the config overrides of train_evaluate.py --setting <name>
RUN_FOLDER = re.compile(  # how train_evaluate.py names a run's folder; collect.py and the measuring scripts read it
    r"^(?P<dataset>[^_]+)_(?P<recipe>small|paper)_(?P<variant>[^_]+)(?:_(?P<setting>.+))?_seed(?P<seed>\d+)$"
)


# ---------------------------------------------------------------- CSVs


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, gzip-compressed when its name ends in ``.gz`` (the per-image predictions)."""
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def recorded_rows(path: Path, columns: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The complete rows a resumable CSV already holds: what a rerun skips.

    A missing or empty file holds none. A row cut short (a kill or a full disk mid-write) is left out, so it is
    measured again. With ``columns``, a file of other columns stops the script: appending to it would misalign.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if columns is not None and reader.fieldnames != list(columns):
            raise SystemExit(f"{path} has other columns than this script writes: move it aside")
        return [r for r in reader if None not in r.values()]


def recorded_keys(path: Path, key: Sequence[str], missing: str = "") -> set[tuple[str, ...]]:
    """The identities (values of the ``key`` columns) of the rows already recorded; a column that older files
    lack, or leave blank, reads as ``missing``."""
    return {tuple(r.get(k) or missing for k in key) for r in recorded_rows(path)}


def append_row(path: Path, row: dict[str, Any], columns: Sequence[str], lineterminator: str = "\r\n") -> dict[str, str]:
    """Appends one row (the header first in a new file) with one flushed write, so a kill never leaves half a
    row; a partial last line is ended first rather than glued to. Returns the row as the CSV reads it back.

    Args:
        path: the CSV file, created with its folder if missing.
        row: values by column; a column it lacks is left blank, one it has beyond ``columns`` is an error, and
            so is a file whose header is not ``columns``.
        columns: the file's columns, in order.
        lineterminator: ``\\r\\n`` is the csv module's default (train_evaluate.py's files); speed.py and
            preprocessing.py write ``\\n``.
    """
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator=lineterminator)
    if not path.is_file() or path.stat().st_size == 0:
        writer.writeheader()
    else:
        with open(path, newline="") as f:  # a file of an older version of the script: the row would misalign
            if next(csv.reader(f), []) != list(columns):
                raise SystemExit(f"{path} has other columns than this script writes: move it aside")
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                buffer.write(lineterminator)
    writer.writerow(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        f.write(buffer.getvalue())
        f.flush()
        os.fsync(f.fileno())
    return {c: str(row.get(c, "")) for c in columns}


def write_whole(path: Path, write: Callable[[Path], None]) -> None:
    """Creates ``path`` through ``write(<path>.partial)`` and a rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    write(partial)
    partial.replace(path)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> None:
    """Writes the rows (a column a row lacks left blank) whole, gzip-compressed for a name ending in ``.gz``."""

    def write(partial: Path) -> None:
        with (gzip.open if path.suffix == ".gz" else open)(partial, "wt", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(fields), restval="")
            writer.writeheader()
            writer.writerows(rows)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())

    write_whole(path, write)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: int = 0) -> str:
    """A markdown table of text cells; its last ``numeric`` columns right-aligned."""
    rule = ["---"] * (len(header) - numeric) + ["---:"] * numeric
    return "\n".join("| " + " | ".join(line) + " |" for line in [header, rule, *rows])


def number(value: float) -> str:
    """A float as the CSVs hold it: six significant digits."""
    return f"{value:.6g}"


def as_stored(row: dict[str, Any]) -> dict[str, str]:
    """A row as the CSV reads it back: floats at six significant digits, everything else as text."""
    return {c: number(v) if isinstance(v, float) else str(v) for c, v in row.items()}


class Timings:
    """The resumable CSV of a timing script (speed.py, preprocessing.py): a measurement is found by its ``key``
    columns, else appended with the date; ``context``: the columns every row of this run shares."""

    def __init__(self, path: Path, columns: Sequence[str], key: Sequence[str], context: dict[str, Any]) -> None:
        self.path, self.columns, self.key, self.context = path, list(columns), tuple(key), context
        self.rows = recorded_rows(path, columns)

    def identity(self, row: dict[str, Any]) -> tuple[str, ...]:
        """The values of the key columns, as strings (as the CSV reads back)."""
        full = {**self.context, **row}
        return tuple(str(full[k]) for k in self.key)

    def find(self, row: dict[str, Any]) -> dict[str, str] | None:
        """An earlier row of the same measurement, if any."""
        identity = self.identity(row)
        return next((r for r in self.rows if self.identity(r) == identity), None)

    def add(self, row: dict[str, Any]) -> dict[str, str]:
        """Writes one row (context and date filled in, floats at six digits); returns it as the CSV holds it."""
        full = {c: "" for c in self.columns} | self.context | {"date": datetime.now(UTC).isoformat(timespec="seconds")}
        stored = append_row(self.path, full | as_stored(row), self.columns, lineterminator="\n")
        self.rows.append(stored)
        return stored


# ---------------------------------------------------------------- the stamp of a row


def git_commit() -> tuple[str, bool]:
    """The short commit of the repository and whether tracked files differ from it ("unknown" outside git):
    a row's numbers belong to the code that measured them."""
    try:
        run = {"cwd": REPO, "capture_output": True, "text": True, "check": True, "timeout": 30}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout.strip())
        return commit or "unknown", dirty
    except (OSError, subprocess.SubprocessError):
        return "unknown", False


def device_name(device: Any = None) -> str:
    """The GPU's name, or the CPU model and the cores this process may use: timings compare only on one machine.

    Args:
        device: a torch device or its name; None: CUDA when available, else the CPU.
    """
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model} ({cores} cores)"


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` (None: left as they are) for the block, and restored after: a
    script's ``main`` may run inside another program (the tests)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def row_stamp() -> dict[str, str]:
    """The ``commit`` and ``device`` columns of a row: the code and the machine that measured it."""
    return {"commit": git_commit()[0], "device": device_name()}


# ---------------------------------------------------------------- command lines

# the options several scripts take alike: the run folders measured; the datasets, seeds and recipe trained; --set
SHARED_ARGUMENTS: dict[str, dict[str, Any]] = {
    "--runs": dict(nargs="+", type=Path, required=True, help="train_evaluate.py run folders"),
    "--datasets": dict(nargs="+", default=["breastmnist", "retinamnist"]),
    "--seeds": dict(nargs="+", type=int, default=[0]),
    "--recipe": dict(choices=["small", "paper"], default="small", help="small: merge small.yaml"),
    "--set": dict(nargs="+", action="extend", default=[], metavar="ID=VALUE", help="config overrides of every run"),
}


def script_parser(doc: str, *shared: str) -> argparse.ArgumentParser:
    """A script's command line: its docstring as the description (the usage examples keep their lines) and the
    ``shared`` options of ``SHARED_ARGUMENTS`` named."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in shared:
        parser.add_argument(name, **SHARED_ARGUMENTS[name])
    return parser


# ---------------------------------------------------------------- the bundle's configs, overrides and named settings


def recipe_configs(dataset: str, recipe: str) -> list[str]:
    """The training configs of a recipe on a dataset, relative to the bundle folder: train.yaml (the paper's
    recipe), the dataset's overlay, and small.yaml for the small recipe."""
    return [
        "configs/train.yaml",
        f"configs/data/{dataset}.yaml",
        *(["configs/small.yaml"] if recipe == "small" else []),
    ]


def run_folder(dataset: str, recipe: str, variant: str, setting: str, seed: int | str) -> str:
    """``<dataset>_<recipe>_<variant>[_<setting>]_seed<S>``: the name of a run's folder (no setting for ``default``)."""
    return f"{dataset}_{recipe}_{variant}{'' if setting == 'default' else f'_{setting}'}_seed{seed}"


def run_fields(name: str) -> dict[str, str] | None:
    """What a run folder's name says (dataset, recipe, variant, setting: ``default`` where it has none, seed), or
    None for a name ``run_folder`` does not give."""
    match = RUN_FOLDER.match(name)
    return None if match is None else {k: v or "default" for k, v in match.groupdict().items()}


@contextlib.contextmanager
def in_bundle_folder() -> Iterator[None]:
    """Configs and ``scripts`` resolve from the bundle folder, as on the command line; the caller's folder after."""
    cwd = os.getcwd()
    os.chdir(BUNDLE)
    try:
        yield
    finally:
        os.chdir(cwd)


def parse_override(text: str) -> tuple[str, Any]:
    """``ID=VALUE`` with VALUE read as JSON where it parses (numbers, lists, true/false/null), else as a string."""
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def override_text(key: str, value: Any) -> str:
    """The ``ID=VALUE`` that ``parse_override`` reads back as ``(key, value)``: how the CSVs record overrides."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def setting_overrides(name: str, folder: Path = SETTINGS) -> dict[str, Any]:
    """The config ids and values of ``<folder>/<name>.yaml``, in file order; none when there is no such file
    (a setting named for its ``--configs``, or ``default``). Experiments are data: the file says what a name means."""
    import yaml

    path = folder / f"{name}.yaml"
    if not path.is_file():
        return {}
    content = yaml.safe_load(path.read_text()) or {}
    if not isinstance(content, dict):
        raise SystemExit(f"{path}: expected config ids and values, got {type(content).__name__}")
    return content


RUN_CONFIG = "run_config.json"  # in a train_evaluate.py run folder: the configs and overrides it was trained with


def run_config(run_dir: Path) -> dict[str, Any]:
    """The configs (relative to the bundle folder) and config overrides a run folder was trained with: the record
    ``train_evaluate.py`` writes there, else, for a folder without one (trained before the record existed), what
    its name says: its recipe's configs and its setting's file. Scripts that rebuild a run's network read it, so
    that a setting which changes the network or its sampler (``width2048``, ``px64``) is evaluated as trained."""
    record = run_dir / RUN_CONFIG
    if record.is_file():
        return json.loads(record.read_text())
    fields = run_fields(run_dir.name)
    if fields is None:
        raise ValueError(f"{run_dir}: no {RUN_CONFIG} and not a run folder name (<dataset>_<recipe>_<variant>_seed<S>)")
    return {
        "configs": recipe_configs(fields["dataset"], fields["recipe"]),
        "overrides": setting_overrides(fields["setting"]),
    }
