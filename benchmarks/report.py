"""Rebuilds the tables of bundle/docs/benchmarks.md from the CSVs in benchmarks/results/.

The page's prose is written by hand; each table sits between ``<!-- table:NAME -->`` and
``<!-- end -->`` markers and is regenerated here from the CSV rows, so no number is typed by hand:

    python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "bundle" / "docs" / "benchmarks.md"
RESULTS = REPO / "benchmarks" / "results"


def read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def f3(text: str) -> str:
    return f"{float(text):.3f}" if text not in ("", None) else "-"


def speed_table(rows: list[dict[str, str]]) -> str:
    """Images per second and the ratio to ``basic`` of every inference and training measurement."""
    wanted = ["infer_dcg", "infer_full_s1", "infer_full_s10", "train_full"]
    out = []
    settings = sorted({(r["recipe"], int(r["image_size"]), int(r["width"])) for r in rows}, key=lambda s: (s[1], s[2]))
    for recipe, size, width in settings:
        by = {
            r["measurement"]: r
            for r in rows
            if (r["recipe"], int(r["image_size"]), int(r["width"])) == (recipe, size, width)
        }
        cells = [f"{size}", f"{width} ({recipe})", f"{float(by['infer_basic']['images_per_s']):.0f}"]
        cells += [f"{float(by[m]['images_per_s']):.0f} ({float(by[m]['ratio_to_basic']):.2f}x)" for m in wanted]
        cells += [f"{float(by['train_basic']['images_per_s']):.0f}"]
        check = by["check_no_wasted_work"]
        cells += [f"{float(check['check_ratio']):.2f} ({'met' if check['check_pass'] == 'True' else 'not met'})"]
        cells += [f"{float(by['train_basic']['peak_mem_mb']):.0f} / {float(by['train_full']['peak_mem_mb']):.0f}"]
        out.append(cells)
    header = ["px", "width", "basic img/s", "DCG prior", "full, S=1", "full, S=10", "full training"]
    header += ["basic training img/s", "no-wasted-work ratio (<= 1.2)", "training peak MiB basic / full"]
    return markdown(header, out)


def evaluation_table(rows: list[dict[str, str]]) -> str:
    """Test-split metrics of the denoised prediction and of the fused DCG prior, per evaluation."""
    out = []
    for r in rows:
        out.append(
            [r["dataset"], r["recipe"], r["epochs"], r["num_samples"]]
            + [f"{f3(r[k])}" for k in ("accuracy", "macro_f1", "auc", "kappa", "ece", "entropy_error_auroc")]
            + [f"{f3(r[k])}" for k in ("prior_accuracy", "prior_macro_f1", "prior_auc", "prior_kappa")]
            + [r["train_seconds"]]
        )
    header = ["dataset", "recipe", "epochs", "S", "ACC", "macro-F1", "AUC", "kappa", "ECE", "error AUROC (entropy)"]
    header += ["prior ACC", "prior F1", "prior AUC", "prior kappa", "training s"]
    return markdown(header, out)


TABLES: dict[str, tuple[str, Callable[[list[dict[str, str]]], str]]] = {
    "speed_h200": ("speed_h200.csv", speed_table),
    "evaluation_h200": ("train_evaluate_h200.csv", evaluation_table),
}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    text = args.page.read_text()
    for name, (csv_name, build) in TABLES.items():
        pattern = re.compile(rf"(<!-- table:{name} -->\n)(?:(?!<!--).)*?(<!-- end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"{args.page} has no '<!-- table:{name} -->' ... '<!-- end -->' block")
        table = build(read(args.results / csv_name))
        text = pattern.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(2), text)
    partial = args.page.with_suffix(".md.partial")
    partial.write_text(text)
    partial.replace(args.page)
    return text


if __name__ == "__main__":
    main()
