"""The benchmark scripts in their tiny modes: one CSV row per measurement, sane numbers, resumable."""

import csv
import importlib.util
import math

from conftest import REPO, require_data

# one thread: the timings are not checked, and a second thread only competes with whatever shares the cores
TINY_ARGS = ["--tiny", "--device", "cpu", "--threads", "1"]
NUMBERS = ("seconds", "images_per_s", "ratio_to_basic")
CHECK_NUMBERS = ("check_full_s", "check_backbones_s", "check_step_s", "check_bound_s", "check_ratio")


def load_script(name: str):
    """A script of benchmarks/ as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def positive_finite(text: str) -> bool:
    return math.isfinite(float(text)) and float(text) > 0


def test_tiny_run_writes_one_row_per_measurement_and_resumes(tmp_path):
    speed = load_script("speed")
    out = tmp_path / "speed.csv"
    returned = speed.main([*TINY_ARGS, "--out", str(out)])
    rows = read_rows(out)
    assert list(rows[0]) == speed.COLUMNS
    assert rows == returned

    k = int(speed.recipe_values("small")["sampling_steps"])  # the tiny run uses the small recipe's sampler
    expected = {
        ("infer_basic", 0, 1),
        ("infer_dcg", 0, 0),
        ("infer_full_s1", k, 1),
        ("infer_full_s10", k, 10),
        ("infer_backbones", 0, 0),
        ("infer_denoiser_step", 1, 10),
        ("check_no_wasted_work", k, 10),
        ("train_basic", 0, 0),
        ("train_full", 0, 0),
    }
    assert sorted((r["measurement"], int(r["steps"]), int(r["samples"])) for r in rows) == sorted(expected)
    for row in rows:
        assert (row["recipe"], row["depths"], row["image_size"], row["width"], row["batch"]) == (
            "small",
            "10/10/10",
            "28",
            "32",
            "4",
        )
        assert row["commit"] and row["device"] and row["date"]
        assert all(positive_finite(row[c]) for c in NUMBERS), row
        if row["measurement"] == "check_no_wasted_work":
            assert all(positive_finite(row[c]) for c in CHECK_NUMBERS), row
            assert row["check_pass"] in ("True", "False")
            bound = float(row["check_backbones_s"]) + k * float(row["check_step_s"])
            assert math.isclose(float(row["check_bound_s"]), bound, rel_tol=1e-4)
        else:
            assert positive_finite(row["peak_mem_mb"]) and positive_finite(row["base_mem_mb"]), row
    basic = {r["measurement"]: r for r in rows}
    assert float(basic["infer_basic"]["ratio_to_basic"]) == 1.0
    assert float(basic["train_basic"]["ratio_to_basic"]) == 1.0

    # a second run of the same commit and device measures nothing again
    again = speed.main([*TINY_ARGS, "--out", str(out)])
    assert read_rows(out) == rows
    assert again == rows


def test_train_evaluate_tiny_run_records_each_evaluation_once(tmp_path):
    """benchmarks/train_evaluate.py --tiny on BreastMNIST: one row per sample count, the figures, resumable."""
    require_data("medmnist/breastmnist.npz")
    script = load_script("train_evaluate")
    args = ["--tiny", "--datasets", "breastmnist", "--samples", "1", "2", "--out", str(tmp_path)]
    script.main(args)
    rows = read_rows(tmp_path / "results.csv")
    assert [(r["dataset"], r["recipe"], r["num_samples"], r["epochs"]) for r in rows] == [
        ("breastmnist", "small", "1", "2"),
        ("breastmnist", "small", "2", "2"),
    ]
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 and 0.0 <= float(r["prior_accuracy"]) <= 1.0 for r in rows)
    run_dir = tmp_path / "breastmnist_small_full_seed0"
    assert (run_dir / "test_samples2" / "calibration.png").is_file() and (run_dir / "tsne" / "tsne.png").is_file()
    script.main(args)  # everything recorded: nothing trained or evaluated again
    assert read_rows(tmp_path / "results.csv") == rows


def test_report_rebuilds_the_tables_from_the_committed_csvs(tmp_path):
    """benchmarks/report.py fills each marked table of a page from benchmarks/results/ and keeps the prose."""
    page = tmp_path / "page.md"
    blocks = ["<!-- table:speed_h200 -->\nstale\n<!-- end -->", "<!-- table:evaluation_h200 -->\n<!-- end -->"]
    page.write_text(f"intro\n{blocks[0]}\nmiddle\n{blocks[1]}\n")
    text = load_script("report").main(["--page", str(page)])
    assert page.read_text() == text and text.startswith("intro\n") and "stale" not in text and "middle" in text
    speed_rows = read_rows(REPO / "benchmarks" / "results" / "speed_h200.csv")
    sizes = {r["image_size"] for r in speed_rows}
    assert text.count("(small)") + text.count("(paper)") == len({(r["image_size"], r["width"]) for r in speed_rows})
    assert sizes == {"28", "64", "224"}
    evaluations = read_rows(REPO / "benchmarks" / "results" / "train_evaluate_h200.csv")
    for r in evaluations:
        assert (
            f"| {r['dataset']} | {r['recipe']} | {r['epochs']} | {r['num_samples']} | {float(r['accuracy']):.3f} |"
            in text
        )
