"""The benchmark scripts in their tiny modes: one CSV row per measurement, sane numbers, resumable."""

import csv
import gzip
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from scipy.stats import binomtest

from conftest import REPO, require_data

# one thread: the timings are not checked, and a second thread only competes with whatever shares the cores
RESULTS = REPO / "benchmarks" / "results"
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
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rt", newline="") as f:
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


def test_preprocessing_tiny_run_compares_the_pipelines_and_resumes(tmp_path):
    preprocessing = load_script("preprocessing")
    out = tmp_path / "preprocessing.csv"
    rows = preprocessing.main(["--tiny", "--out", str(out)])
    assert read_rows(out) == rows and list(rows[0]) == preprocessing.COLUMNS
    assert sorted((r["format"], r["pipeline"]) for r in rows) == sorted(
        (f, p) for f in preprocessing.FORMATS for p in preprocessing.PIPELINES
    )
    for row in rows:
        assert (row["width"], row["height"], row["size"], row["threads"]) == ("600", "400", "224", "1")
        assert all(positive_finite(row[c]) for c in ("seconds_per_image", "images_per_s", "speedup_to_old")), row
        if row["pipeline"] == "old":
            assert float(row["speedup_to_old"]) == 1.0 and float(row["max_abs_diff"]) == 0.0
        else:  # the same images within the tolerance of tests/test_preprocessing.py (sharp synthetic edges: max 0.3)
            assert 0 < float(row["mean_abs_diff"]) < 0.01 and float(row["max_abs_diff"]) < 0.3, row
    assert preprocessing.main(["--tiny", "--out", str(out)]) == rows and read_rows(out) == rows  # nothing again


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
    trained_with = {"configs": ["configs/train.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]}
    assert json.loads((run_dir / "run_config.json").read_text()) == trained_with | {"overrides": script.TINY}
    script.main(args)  # everything recorded: nothing trained or evaluated again
    assert read_rows(tmp_path / "results.csv") == rows


def test_report_rebuilds_the_committed_pages_from_the_csvs(tmp_path):
    """benchmarks/report.py refills every marked table of the pages of its map (the results page, the history
    log, the bundle's README) from benchmarks/results/, keeps the prose, and gives back the committed pages."""
    report = load_script("report")
    docs = REPO / "bundle" / "docs"
    pages = list(dict.fromkeys(section.page for section in report.MAP))
    assert pages == ["benchmarks.md", "README.md", "benchmarks_history.md"]
    for page in pages:
        stale = re.sub(
            r"(<!-- table:\w+ -->\n).*?(<!-- end -->)", r"\1stale\n\2", (docs / page).read_text(), flags=re.S
        )
        (tmp_path / page).write_text(stale)
    built = report.main(["--docs", str(tmp_path)])
    for page in pages:  # the committed pages are up to date, and a second run would change nothing
        assert built[page] == (tmp_path / page).read_text() == (docs / page).read_text(), page
    figures = [name for section in report.MAP for name in section.figures]
    assert len(figures) == 8
    for name in figures:
        assert (tmp_path / "images" / name).read_bytes().startswith(b"\x89PNG")
    names = ["diffusion_study_cpu", "diagnostics_cpu", "medmnist_schedule_cpu", "second_view_cpu", "ranking_cpu"]
    names += ["audit_study_cpu", "diagnostics_audit_cpu", "in_sample_cpu", "crossfit_seeds_cpu"]
    names += ["crossfit_seeds_retinamnist_cpu", "epoch_mean_cpu"]
    names += ["basic_crossfit_cpu", "crossfit_variants_cpu", "crossfit_medmnist_basic_cpu"]
    names += ["aptos_crossfit_cpu", "diagnostics_aptos_cpu", "in_sample_aptos_cpu", "epoch_mean_aptos_cpu"]
    names += ["aptos_crossfit_basic_cpu", "test_selection_cpu", "ablation_y0", "published", "paper_datasets_cpu"]
    names += ["uncertainty_cpu", "uncertainty_crossfit_cpu", "uncertainty_aptos_cpu"]
    names += ["evaluation_y0_cpu", "speed_h200", "speed_cpu", "sampling_steps_y0_cpu"]
    names += ["smallest_k_y0_cpu", "study_h100", "seeds", "fixed_prior_cpu", "learning_rate_cpu"]
    names += ["small_recipe_cpu", "headline"]
    assert [name for section in report.MAP for name in section.tables] == names
    text = "\n".join(built.values())
    history = built["benchmarks_history.md"]
    assert text.count("Provenance: `") - history.count("Provenance: `") == len(names)  # where its numbers come from
    # the history log's frozen tables are what the builders the results page uses still make of their CSVs
    metrics, curves = read_rows(RESULTS / "ablation_h200.csv"), read_rows(RESULTS / "ablation_h200_curves.csv")
    predictions = read_rows(RESULTS / "ablation_h200_predictions.csv.gz")
    small, steps = read_rows(RESULTS / "small_cpu.csv"), read_rows(RESULTS / "sampling_steps_cpu.csv")
    frozen = {
        "evaluation_h200": report.evaluation_table(read_rows(RESULTS / "train_evaluate_h200.csv")),
        "ablation_h200": report.ablation_table(metrics, predictions),
        "study_h200": report.study_table(metrics, curves),
        "evaluation_cpu": report.evaluation_table(small),
        "study_cpu": report.study_table(small, read_rows(RESULTS / "small_cpu_curves.csv")),
        "sampling_steps_cpu": report.sampling_steps_table(steps),
        "smallest_k_cpu": report.smallest_agreeing_k_table(steps),
    }
    for name, table in frozen.items():
        assert f"\n{table}\n\nProvenance: `" in history, name
    text += "".join(f"\n<!-- table:{name} -->\n{table}\n<!-- end -->" for name, table in frozen.items())
    assert "stale" not in text
    settings = 0
    for name in ("speed_h200", "speed_cpu"):
        speed_rows = read_rows(RESULTS / f"{name}.csv")
        assert {r["image_size"] for r in speed_rows} == {"28", "64", "224"}
        settings += len({(r["image_size"], r["width"]) for r in speed_rows})
    page = built["benchmarks.md"]
    assert page.count("(small)") + page.count("(paper)") == settings  # one table row per setting
    evaluations = read_rows(RESULTS / "train_evaluate_h200.csv")
    evaluations += matching(read_rows(RESULTS / "small_cpu.csv"), split="test", setting="default")
    y0_evaluations = matching(read_rows(RESULTS / "small_y0_cpu.csv"), split="test", setting="y0")
    assert len(y0_evaluations) == 4  # two datasets x S = 1 and 10
    for r in evaluations + y0_evaluations:
        assert (
            f"| {r['dataset']} | {r['recipe']} | {r['epochs']} | {r['num_samples']} | {float(r['accuracy']):.3f} |"
            in text
        )

    full = table_rows(text, "ablation_h200", "BreastMNIST", "full")
    tests = matching(metrics, dataset="breastmnist", setting="default", variant="full", split="test", num_samples="10")
    accuracies = [float(r["accuracy"]) for r in tests]
    assert len(accuracies) == 3
    assert full[1][4] == f"{statistics.mean(accuracies):.3f} ± {statistics.stdev(accuracies):.3f}"  # S=10, 3 seeds
    for row in table_rows(text, "ablation_h200", "", ""):
        if row[1] != "basic (ResNet-18)":
            assert 0.0 <= float(row[9]) <= 1.0, row  # McNemar p of seed 0
    # the same McNemar p, recomputed from the predictions: full S=10 against basic, BreastMNIST seed 0
    correct = {}
    for r in matching(predictions, dataset="breastmnist", setting="default", seed="0", split="test", num_samples="10"):
        correct.setdefault(r["variant"], {})[r["id"]] = r["true_label"] == r["predicted_label"]
    only_full = sum(v and not correct["basic"][i] for i, v in correct["full"].items())
    only_basic = sum(not v and correct["basic"][i] for i, v in correct["full"].items())
    p_value = 1.0 if only_full + only_basic == 0 else binomtest(only_full, only_full + only_basic).pvalue
    assert full[1][9] == f"{p_value:.3g}"

    # the smallest K agreeing with the full chain on >= 99 % of the test images, from the CSV
    for table, csv_name, setting in (
        ("smallest_k_cpu", "sampling_steps_cpu", "default"),
        ("smallest_k_y0_cpu", "sampling_steps_y0_cpu", "y0"),
    ):
        steps = matching(read_rows(RESULTS / f"{csv_name}.csv"), split="test", sampler="ddim", start="noise")
        steps = matching(steps, setting=setting)
        assert {"breastmnist", "retinamnist"} <= {r["dataset"] for r in steps}
        for dataset in {r["dataset"] for r in steps}:
            chain = sorted(matching(steps, dataset=dataset, samples="1"), key=lambda r: int(r["steps"]))
            assert int(chain[-1]["steps"]) == 1000 and float(chain[-1]["agreement_full_chain"]) == 1.0
            smallest = min(
                int(r["steps"])
                for r in chain
                if all(float(x["agreement_full_chain"]) >= 0.99 for x in chain if int(x["steps"]) >= int(r["steps"]))
            )
            assert table_rows(text, table, dataset, "S=1")[0][2] == str(smallest)

    # the paper's datasets at CPU scale: the CSV's value, the paper's row beside it, McNemar against basic
    paper = read_rows(RESULTS / "paper_datasets_cpu.csv")
    ham = matching(paper, dataset="ham10000", setting="default", variant="full", split="test", num_samples="10")
    cells = table_rows(text, "paper_datasets_cpu", "HAM10000, authors' 70/30 split", "full")
    cells = [c for c in cells if c[0] == "HAM10000, authors' 70/30 split"]  # not the y0 block
    assert [c[3] for c in cells if c[2] == "10"] == [f"{float(ham[0]['accuracy']):.3f}"]
    assert 0.0 <= float(cells[0][8]) <= 1.0
    # the y0 block has no basic row of its own: its McNemar pairs it with the authors'-split basic
    y0_rows = table_rows(text, "paper_datasets_cpu", "HAM10000, authors' 70/30 split, y0", "")
    assert [r[1] for r in y0_rows] == ["DCG prior (fused, of full)", "full", "full"]
    ham_y0 = matching(paper, dataset="ham10000", setting="y0", variant="full", split="test", num_samples="1")
    assert y0_rows[1][3] == f"{float(ham_y0[0]['accuracy']):.3f}" and 0.0 <= float(y0_rows[1][8]) <= 1.0
    reference = table_rows(text, "paper_datasets_cpu", "HAM10000, authors'", "DiffMIC paper")
    assert reference[0][3] == "0.906" and reference[0][5] == "0.816"
    assert table_rows(text, "paper_datasets_cpu", "APTOS", "DiffMIC paper")[0][3] == "0.858"

    published = table_rows(text, "published", "RetinaMNIST", "ResNet-18 (28)")
    assert published[0][3:5] == ["0.717", "0.524"]
    study = table_rows(text, "study_h200", "default", "BreastMNIST")[0]
    run = dict(dataset="breastmnist", setting="default", variant="full", seed="0")
    s10 = matching(metrics, **run, split="validation", num_samples="10")[0]
    assert study[5].startswith(f"{float(s10['accuracy']):.3f} / ")
    assert "not finished in the lease" in table_rows(text, "study_h200", "epochs60", "RetinaMNIST")[0][4]

    # the ablation of the y0 setting: its diffusion rows from study_h100.csv, basic as in the default ablation
    study = read_rows(RESULTS / "study_h100.csv")
    tests = matching(study, dataset="retinamnist", setting="y0", variant="full", split="test", num_samples="10")
    accuracies = [float(r["accuracy"]) for r in tests]
    assert len(accuracies) == 3
    y0_full = table_rows(text, "ablation_y0", "RetinaMNIST", "full")
    assert y0_full[1][4] == f"{statistics.mean(accuracies):.3f} ± {statistics.stdev(accuracies):.3f}"
    basic = "basic (ResNet-18)"
    assert table_rows(text, "ablation_y0", "", basic) == table_rows(text, "ablation_h200", "", basic)
    # the README's headline rows are the ablation's means; its single-run table the CSV's seed-0 values
    for dataset in ("BreastMNIST", "RetinaMNIST"):
        headline = table_rows(text, "headline", dataset, "`full` (y0), S = 10")[0]
        assert headline[2:5] == table_rows(text, "ablation_y0", dataset, "full")[1][4:7]
    breast = matching(read_rows(RESULTS / "small_y0_cpu.csv"), dataset="breastmnist", split="test", num_samples="1")
    assert table_rows(text, "small_recipe_cpu", "BreastMNIST", "test")[0][2].startswith(
        f"{float(breast[0]['accuracy']):.3f} / "
    )
    # the seeds table ranks the settings by their mean validation ACC (both datasets, S = 1 and 10, all seeds)
    validation = matching(study, setting="y0", variant="full", split="validation")
    assert len(validation) == 12
    ranking = text.split("all seeds: ", 1)[1].split(".\n", 1)[0]
    assert f"y0 {statistics.mean(float(r['accuracy']) for r in validation):.3f}" in ranking


def matching(rows: list[dict[str, str]], **fields: str) -> list[dict[str, str]]:
    return [r for r in rows if all(r[k] == v for k, v in fields.items())]


def table_rows(text: str, name: str, first: str, second: str) -> list[list[str]]:
    """The cells of the rows of a marked table whose first two cells start with the given texts."""
    block = text.split(f"<!-- table:{name} -->\n", 1)[1].split("<!-- end -->", 1)[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in block.splitlines() if line.startswith("|")]
    return [r for r in rows[2:] if r[0].startswith(first) and r[1].startswith(second)]


def test_report_second_view_and_uncertainty_tables_on_a_planted_case():
    """The second view averages the prior with basic's probabilities; each uncertainty is judged on its own
    prediction; an uncertainty equal on every image refers nothing (samples that all agree)."""
    from sklearn.metrics import roc_auc_score

    report = load_script("report")
    run = dict(dataset="breastmnist", recipe="small", seed="0", split="test", num_samples="10")
    full, basic = [], []
    truth = [1, 1, 0, 0]
    prior = [[0.4, 0.6], [0.55, 0.45], [0.3, 0.7], [0.9, 0.1]]  # right, wrong (unsure), wrong (sure), right
    denoised = [[0.0, 1.0], [0.2, 0.8], [0.0, 1.0], [1.0, 0.0]]  # right, right, wrong, right
    basic_probs = [[0.2, 0.8], [0.3, 0.7], [0.8, 0.2], [0.6, 0.4]]  # all right
    for i in range(4):
        ids = dict(id=f"b_test_{i}", true_label=str(truth[i]))
        full.append(
            dict(run, setting="y0_medmnist", variant="full", **ids, predicted_label=str(int(denoised[i][1] > 0.5)))
            | dict(prior_label=str(int(prior[i][1] > 0.5)), prob_0=str(denoised[i][0]), prob_1=str(denoised[i][1]))
            | dict(prior_prob_0=str(prior[i][0]), prior_prob_1=str(prior[i][1]), vote_agreement="1.0")
        )
        basic.append(
            dict(
                run, setting="basic_medmnist", variant="basic", **ids, predicted_label=str(int(basic_probs[i][1] > 0.5))
            )
            | dict(prior_label="0", prob_0=str(basic_probs[i][0]), prob_1=str(basic_probs[i][1]))
        )

    def rows(table: str, first: str, second: str) -> list[list[str]]:
        return table_rows(f"<!-- table:t -->\n{table}\n<!-- end -->", "t", first, second)

    second = rows(report.second_view_table(full + basic), "BreastMNIST", "0")[0]
    # the mean of prior and basic: [0.3, 0.7], [0.425, 0.575], [0.55, 0.45], [0.75, 0.25]: all 4 right, where
    # the prior gets 2 (McNemar: 2 discordant images, both for the mean); a tied pair counts half in an AUC
    assert second[3:] == ["4", "0.500 / 0.500", "1.000 / 1.000", "0.750 / 0.625", "1.000 / 1.000"] + [
        "0.750 / 1.000",
        "0.5",
    ]
    uncertainty = rows(report.uncertainty_table(full + basic), "y0_medmnist", "BreastMNIST")[0]
    # prior entropy: highest on image 1 (0.55/0.45, wrong), then 0 (right), 2 (wrong), 3: errors 1 and 2
    prior_u = [-sum(p * np.log(p) for p in row) for row in prior]
    assert uncertainty[8] == f"{roc_auc_score([0, 1, 1, 0], prior_u):.3f}"
    assert uncertainty[6:8] == ["0.500", "- (equal on every image)"]  # every sample agreed: no disagreement
    assert uncertainty[4] == "0.333"  # denoised entropy: the wrong image 2 ties two right ones at 0 nats, below one


def test_report_pairs_each_seed_with_basic_pools_the_seeds_and_averages_their_uncertainty():
    """Study 11's table pairs the denoised prediction with basic of the same seed, pools the seeds' images for
    McNemar and averages their AUCs; the uncertainty table gives a setting of several seeds their mean."""
    from sklearn.metrics import roc_auc_score

    report = load_script("report")
    truth = [1, 1, 0, 0]
    label_mean = {"0": [0.9, 0.45, 0.4, 0.2], "1": [0.8, 0.3, 0.6, 0.1]}  # class-1 scores
    basic_score = {"0": [0.7, 0.4, 0.3, 0.2], "1": [0.6, 0.7, 0.2, 0.45]}  # seed 0 misses image 1, seed 1 none
    rows = []
    for seed in ("0", "1"):
        for i in range(4):
            run = dict(dataset="retinamnist", recipe="small", seed=seed, split="validation", id=f"r_{i}")
            run |= dict(true_label=str(truth[i]), prior_label=str(truth[i]))
            full, basic = label_mean[seed][i], basic_score[seed][i]
            rows.append(
                run
                | dict(setting="y0_crossfit", variant="full", num_samples="10", predicted_label=str(int(full > 0.5)))
                | dict(prob_0=str(1 - full), prob_1=str(full), label_mean_0=str(1 - full), label_mean_1=str(full))
                | dict(prior_prob_0="0.5", prior_prob_1="0.5", vote_agreement="1.0")
            )
            rows.append(
                run
                | dict(setting="basic", variant="basic", num_samples="1", predicted_label=str(int(basic > 0.5)))
                | dict(prob_0=str(1 - basic), prob_1=str(basic))
            )
    text = f"<!-- table:t -->\n{report.denoised_vs_basic_table(rows, 'y0_crossfit', ('basic',))}\n<!-- end -->"
    found = {r[3]: r[4:] for r in table_rows(text, "t", "RetinaMNIST", "basic")}
    assert list(found) == ["0", "1", "pooled"]
    auc = {s: (roc_auc_score(truth, label_mean[s]), roc_auc_score(truth, basic_score[s])) for s in ("0", "1")}
    # seed 0: both miss image 1 alone; seed 1: the denoised prediction misses images 1 and 2, basic none
    assert found["0"][:6] == ["4", f"0.750 / {auc['0'][0]:.3f}", f"0.750 / {auc['0'][1]:.3f}", "+0.000", "0 / 0", "1"]
    assert found["0"][6].startswith(f"{auc['0'][0] - auc['0'][1]:+.3f} [")  # the paired bootstrap of the AUCs
    assert found["1"][:4] == ["4", f"0.500 / {auc['1'][0]:.3f}", f"1.000 / {auc['1'][1]:.3f}", "-0.500"]
    pooled_auc = [np.mean([auc[s][k] for s in auc]) for k in (0, 1)]
    p_value = binomtest(0, 2, 0.5).pvalue  # pooled: 2 images only basic gets right
    runs = report.evaluations(rows)
    pairs = [(runs[("retinamnist", "y0_crossfit", "full", s, "10", "validation")],
              runs[("retinamnist", "basic", "basic", s, "1", "validation")]) for s in ("0", "1")]  # fmt: skip
    assert found["pooled"] == [
        "8",
        f"0.625 / {pooled_auc[0]:.3f}",
        f"0.875 / {pooled_auc[1]:.3f}",
        "-0.250",
        "0 / 2",
        f"{p_value:.3g}",
        report.paired_auc_difference([(full, full.label_mean, basic.probs) for full, basic in pairs]),
    ]
    uncertainty = f"<!-- table:t -->\n{report.uncertainty_table(rows, settings=('y0_crossfit',))}\n<!-- end -->"
    seeds = {r[2]: r[4:] for r in table_rows(uncertainty, "t", "y0_crossfit", "RetinaMNIST")}
    assert list(seeds) == ["0", "1", "mean"]
    # each seed's wrong images have the highest denoised entropy (seed 0: 0.69 nats; seed 1: 0.67 and 0.61)
    assert seeds["0"][0] == seeds["1"][0] == seeds["mean"][0] == "1.000"
    assert seeds["1"][2:4] == ["0.500", "- (equal on every image)"]  # every sample agreed: nothing to rank
    assert seeds["mean"][2:4] == ["0.500", "-"]
    assert report.uncertainty_table(rows, settings=("y0",)).count("\n") == 1  # another setting: no rows


def test_report_auc_and_bootstrap_agree_with_sklearn():
    """The vectorised AUC of the bootstrap equals sklearn's roc_auc_score on the committed predictions."""
    from sklearn.metrics import roc_auc_score

    report = load_script("report")
    runs = report.evaluations(read_rows(RESULTS / "ablation_h200_predictions.csv.gz"))
    for dataset in ("breastmnist", "retinamnist"):
        run = runs[(dataset, "default", "full", "0", "10", "test")]
        if run.probs.shape[1] == 2:
            expected = roc_auc_score(run.true, run.probs[:, 1])
        else:
            expected = roc_auc_score(run.true, run.probs, multi_class="ovr", average="macro")
        ones = np.ones((1, len(run.true)), dtype=int)
        assert math.isclose(report.macro_auc(ones, run.true, run.probs)[0], expected, rel_tol=1e-12)
        accuracy, auc = report.bootstrap_intervals(run.true, run.predicted, run.probs)
        low, high = (float(x) for x in accuracy.strip("[]").split(","))
        assert low <= float((run.true == run.predicted).mean()) <= high
        assert report.bootstrap_intervals(run.true, run.predicted, run.probs) == (accuracy, auc)  # fixed seed


def test_paired_auc_difference_on_planted_cases():
    """The paired bootstrap of an AUC difference: zero against itself, clearly positive for a perfect ranking
    against a random one (and the same p-value the other way round), a seed repeated gives the same answer, and
    evaluations of different images are refused."""
    report = load_script("report")
    rng = np.random.default_rng(0)
    true = np.repeat([0, 1], 40)
    perfect = np.stack([1 - true, true], 1) * 0.5 + rng.random((80, 1)) * 0.1  # every positive above every negative
    noise = rng.random((80, 2))
    run = report.Evaluation([f"i{k}" for k in range(80)], true, true, true, perfect)
    assert report.paired_auc_difference([(run, perfect, perfect)]) == "+0.000 [+0.000, +0.000], p 1"
    better = report.paired_auc_difference([(run, perfect, noise)])
    observed = 1.0 - report.image_auc(run, noise)
    assert better.startswith(f"{observed:+.3f} [") and better.endswith("p < 0.001")  # no resample of 2000 below 0
    low = float(better.split("[")[1].split(",")[0])
    assert low > 0  # the interval excludes 0
    worse = report.paired_auc_difference([(run, noise, perfect)])
    assert worse.startswith(f"{-observed:+.3f} [") and worse.endswith("p < 0.001")
    subtle = report.paired_auc_difference([(run, noise[:, ::-1], noise)])  # a p-value between the extremes
    assert 0.001 < float(subtle.split("p ")[1]) < 1
    assert report.paired_auc_difference([(run, perfect, noise)] * 2) == better  # the mean of two equal seeds
    other = run._replace(ids=[f"j{k}" for k in range(80)])
    with pytest.raises(ValueError, match="same images"):
        report.paired_auc_difference([(run, perfect, noise), (other, perfect, noise)])


def write_csv(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def metric_row(dataset, setting, samples, split, accuracy):
    """A results.csv row of train_evaluate.py (a subset of its columns)."""
    run = dict(dataset=dataset, recipe="small", setting=setting, overrides="progress_bar=false", epochs="30")
    return run | dict(seed="0", variant="full", num_samples=samples, split=split, accuracy=accuracy, commit="0e32bb3")


def test_collect_merges_metrics_predictions_and_curves(tmp_path):
    """benchmarks/collect.py on two tiny train_evaluate.py folders: the three CSVs, deduplicated and complete."""
    from torch.utils.tensorboard import SummaryWriter

    first, second = tmp_path / "job1", tmp_path / "job2"
    write_csv(first / "results.csv", [metric_row("breastmnist", "default", s, "test", "0.5") for s in ("1", "10")])
    write_csv(second / "results.csv", [metric_row("breastmnist", "default", "10", "test", "0.75")])  # a rerun
    breast = first / "breastmnist_small_full_seed0"
    write_csv(
        breast / "test_samples1" / "predictions.csv",
        [
            dict(id="b_test_1", true_label="normal", predicted_label="malignant", prob_malignant="0.6")
            | dict(prob_normal="0.4", entropy="0.67", vote_label="malignant", vote_agreement="1", prior_label="normal"),
            dict(id="b_test_0", true_label="malignant", predicted_label="malignant", prob_malignant="0.9")
            | dict(prob_normal="0.1", entropy="0.33", vote_label="malignant", vote_agreement="1", prior_label="normal"),
        ],
    )
    retina = second / "retinamnist_small_full_no_ema_seed0"
    write_csv(
        retina / "validation_samples10" / "predictions.csv",
        [
            dict(id="r_val_0", true_label="g2", predicted_label="g1", prob_g0="0.1", prob_g1="0.5", prob_g2="0.4")
            | dict(entropy="0.9", vote_label="g1", vote_agreement="0.6", prior_label="g2")
        ],
    )
    writer = SummaryWriter(log_dir=str(breast / "tb"))
    for epoch, value in ((6, 0.5), (7, 0.625)):
        writer.add_scalar("accuracy", value, epoch)
        writer.add_scalar("prior_accuracy", value + 0.25, epoch)
    writer.add_scalar("loss", 1.0, 120)  # per iteration: not a curve
    writer.close()
    (tmp_path / "job1.log").write_text("a shell glob matches the logs too\n")

    collect = load_script("collect")
    results = tmp_path / "results"
    runs = [str(first), str(second), str(tmp_path / "job1.log")]
    paths = collect.main(["--runs", *runs, "--name", "tiny", "--results", str(results), "--commit", "d7a9c8e-dirty"])
    assert sorted(p.name for p in results.iterdir()) == ["tiny.csv", "tiny_curves.csv", "tiny_predictions.csv.gz"]
    assert paths["metrics"] == results / "tiny.csv"

    metrics = read_rows(results / "tiny.csv")
    assert [(r["num_samples"], r["accuracy"], r["commit"]) for r in metrics] == [
        ("1", "0.5", "d7a9c8e-dirty"),
        ("10", "0.75", "d7a9c8e-dirty"),  # the later folder's row replaced the first one's
    ]

    predictions = read_rows(results / "tiny_predictions.csv.gz")
    assert list(predictions[0]) == collect.PREDICTION_FIELDS + ["prob_0", "prob_1", "prob_2"]
    key = ("dataset", "setting", "variant", "seed", "num_samples", "split", "id")
    assert [tuple(r[k] for k in key) for r in predictions] == [
        ("breastmnist", "default", "full", "0", "1", "test", "b_test_0"),
        ("breastmnist", "default", "full", "0", "1", "test", "b_test_1"),
        ("retinamnist", "no_ema", "full", "0", "10", "validation", "r_val_0"),
    ]
    labels_and_probs = ("true_label", "predicted_label", "prior_label", "prob_0", "prob_1", "prob_2")
    assert [tuple(r[k] for k in labels_and_probs) for r in predictions] == [
        ("0", "0", "1", "0.9", "0.1", ""),  # class indices in the order of the prob_ columns; blank past 2 classes
        ("1", "0", "1", "0.6", "0.4", ""),
        ("2", "1", "2", "0.1", "0.5", "0.4"),
    ]

    curves = read_rows(results / "tiny_curves.csv")
    assert list(curves[0]) == collect.CURVE_FIELDS
    assert [(r["setting"], r["tag"], r["epoch"], float(r["value"])) for r in curves] == [
        ("default", "accuracy", "6", 0.5),
        ("default", "accuracy", "7", 0.625),
        ("default", "prior_accuracy", "6", 0.75),
        ("default", "prior_accuracy", "7", 0.875),
    ]


def test_sampling_steps_rows_agree_with_the_evaluation_inferer_and_resume(tmp_path, trained_bundle):
    """benchmarks/sampling_steps.py on the session's tiny bundle: every (K, S, start) row once, the full chain as
    reference, K = 10 equal to DiffMICInferer's own pass over the test loader, and a deleted row recomputed alone."""
    import torch

    from conftest import TINY
    from scripts.checkpoint import load_weights

    script = load_script("sampling_steps")
    run = tmp_path / "breastmnist_small_full_seed0"
    run.mkdir()
    (run / "models").symlink_to(trained_bundle["dir"] / "models")
    out = tmp_path / "steps.csv"
    args = ["--runs", str(run), "--tiny", "--steps", "1", "10", "--device", "cpu", "--out", str(out), "--set"]
    args += [f"{k}={v}" for k, v in TINY.items() if k != "seed"]
    written = script.main(args)
    rows = read_rows(out)
    assert rows == written and list(rows[0]) == script.COLUMNS
    total = 1000
    expected = {("ddim", k, s, "noise") for k in (1, 10, total) for s in (1, 2)}
    expected |= {("ddim", k, 1, "prior_mean") for k in (1, 10, total)}
    assert sorted((r["sampler"], int(r["steps"]), int(r["samples"]), r["start"]) for r in rows) == sorted(expected)
    for row in rows:
        assert row["images"] == "156" and row["split"] == "test"
        agreement = float(row["agreement_full_chain"])
        assert agreement == 1.0 if int(row["steps"]) == total else 0.0 <= agreement <= 1.0
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and positive_finite(row["sample_seconds"])
    assert len({(r["prior_accuracy"], r["prior_auc"]) for r in rows}) == 1  # one backbone pass per split

    # the config's own sampler (DDIM, K = 10) with 2 samples, as `run evaluating` computes it batch by batch
    parser = script.load_parser(script.Run(run), "test", dict(TINY))
    network = parser.get_parsed_content("network_def")
    load_weights(network, str(run / "models" / "model.pt"), "cpu")
    inferer = parser.get_parsed_content("validate#inferer")
    inferer.num_samples = 2
    probs, labels = [], []
    with torch.no_grad():
        for batch in parser.get_parsed_content("validate#dataloader"):
            probs.append(inferer(batch["image"], network.eval(), ids=batch["id"]))
            labels.append(torch.as_tensor(batch["label"]).reshape(-1))
    accuracy = float((torch.cat(probs).argmax(1) == torch.cat(labels)).float().mean())
    (k10,) = matching(rows, sampler="ddim", steps="10", samples="2", start="noise")
    assert math.isclose(float(k10["accuracy"]), accuracy, abs_tol=1e-6)

    assert script.main(args) == []  # everything recorded
    kept = [r for r in rows if (r["steps"], r["samples"], r["start"]) != ("1", "2", "noise")]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=script.COLUMNS)
        writer.writeheader()
        writer.writerows(kept)
    (again,) = script.main(args)  # the missing row, with its group's full chain recomputed as reference
    (before,) = matching(rows, steps="1", samples="2", start="noise")
    assert {k: again[k] for k in ("accuracy", "agreement_full_chain")} == {
        k: before[k] for k in ("accuracy", "agreement_full_chain")
    }


def test_diagnostics_counterfactuals_and_stackers_on_the_tiny_bundle(tmp_path, trained_bundle):
    """benchmarks/diagnostics.py: every measure on the three splits asked for, the stackers on test only, `denoised`
    equal to the evaluation inferer's S = 1 accuracy, `prior` to the prior's, the out-of-fold and same-epoch priors of
    a latest checkpoint with DCG copies (here copies of the network's own DCG: the prior itself), and a measured run
    skipped the second time."""
    import torch

    from conftest import TINY
    from scripts.checkpoint import load_weights
    from scripts.crossfit import FoldGuidance

    script = load_script("diagnostics")
    run = tmp_path / "breastmnist_small_full_seed0"
    (run / "models").mkdir(parents=True)
    (run / "models" / "model.pt").symlink_to(trained_bundle["dir"] / "models" / "model.pt")
    evaluated = script.load_parser(script.Run(run), "test", dict(TINY))
    network = load_weights(evaluated.get_parsed_content("network_def"), str(run / "models" / "model.pt"), "cpu")
    copies = FoldGuidance(network.dcg, 2, evaluated.get_parsed_content("datalists")["train"], seed=0)
    latest = {"network": network.state_dict(), "fold_guidance": copies.state_dict()}
    torch.save(latest, run / "models" / "latest_checkpoint_epoch=3.pt")
    out = tmp_path / "diagnostics.csv"
    args = ["--runs", str(run), "--device", "cpu", "--out", str(out), "--splits", "train", "validation", "test"]
    args += ["--set"] + [f"{k}={v}" for k, v in TINY.items() if k != "seed"]
    written = script.main(args)
    rows = read_rows(out)
    assert rows == written and list(rows[0]) == script.COLUMNS
    expected = {(split, m) for split in ("train", *script.SPLITS) for m in script.MEASURES}
    expected |= {("test", m) for m in script.STACKERS} | {("train", "prior_out_of_fold"), ("train", "prior_latest")}
    assert sorted((r["split"], r["measure"]) for r in rows) == sorted(expected)
    by = {(r["split"], r["measure"]): r for r in rows}
    assert {r["images"] for r in rows if r["split"] == "test"} == {"156"}
    assert {r["images"] for r in rows if r["split"] == "train"} == {"546"}  # the training images, in-sample
    assert by[("test", "denoised")]["changed_vs_denoised"] == "0"
    assert by[("test", "prior")]["changed_vs_prior"] == "0"
    for measure in ("prior_out_of_fold", "prior_latest"):  # copies of the DCG, and the DCG itself: its own priors
        assert by[("train", measure)]["changed_vs_prior"] == "0"
        assert math.isclose(
            float(by[("train", measure)]["confidence"]), float(by[("train", "prior")]["confidence"]), rel_tol=1e-5
        )
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0 and 0.0 <= float(row["changed_vs_denoised"]) <= 1.0
        assert 0.0 <= float(row["changed_vs_prior"]) <= 1.0
        assert 0.5 - 1e-6 <= float(row["confidence"]) <= 1.0  # the mean top probability of 2 classes
    # the same numbers as `run evaluating` of the session's bundle (S = 1, the config's sampler)
    outputs = script.backbone_outputs(network.eval(), evaluated.get_parsed_content("validate#dataloader"), "cpu")
    prior_accuracy = float((outputs["prior"].argmax(1) == outputs["labels"]).float().mean())
    assert math.isclose(float(by[("test", "prior")]["accuracy"]), prior_accuracy, abs_tol=1e-6)
    assert script.main(args) == []  # recorded: not measured again


def test_gpu_ablation_runs_a_picked_job_in_tiny_mode_and_packs_its_results(tmp_path):
    """benchmarks/gpu_ablation.sh on the CPU: job 70 (every switch of the diffusion study, BreastMNIST) made tiny,
    then a bad PART. Its list-valued `--set dcg_loss_terms=fused` reaches the trainer through the config check."""
    data_dir = require_data("medmnist/breastmnist.npz")
    env = dict(
        os.environ,
        OUT=str(tmp_path),
        DIFFMIC_DATA_DIR=str(data_dir),
        PYTHON=sys.executable,
        PART="70",
        LIMIT="600",
        EVAL_SECONDS="60",
        EXTRA_ARGS="--tiny --datasets breastmnist",  # 2 epochs, the second joint
    )
    script = str(REPO / "benchmarks" / "gpu_ablation.sh")
    done = subprocess.run(["bash", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    work = tmp_path / "work"
    assert (work / "jobs.txt").read_text().startswith("job 70: exit 0 (--datasets breastmnist")
    assert "cores:" in (work / "machine.txt").read_text()
    rows = read_rows(work / "job70" / "results.csv")
    assert sorted((r["split"], r["num_samples"]) for r in rows) == [
        ("test", "1"),
        ("test", "10"),
        ("validation", "1"),
        ("validation", "10"),
    ]
    switches = (
        "prior_mode=eval prior_error_weight=10 dcg_loss_terms=fused dcg_amsgrad=true"  # a string: ["fused"] needed
    )
    assert {(r["setting"], r["overrides"].startswith(switches), r["epochs"]) for r in rows} == {("y0_all3", True, "2")}
    with tarfile.open(tmp_path / "results.tar.gz") as packed:
        names = packed.getnames()
    assert "work/job70/results.csv" in names and not any("/models" in n for n in names)

    bad = subprocess.run(["bash", script], cwd=REPO, env=dict(env, PART="y1"), capture_output=True, text=True)
    assert bad.returncode == 2 and "crossfit5, crossfit_medmnist, all or job numbers" in bad.stderr


# the `--set` of each `--setting` in gpu_ablation.sh before the settings became files (commit 3868c2c)
GPU_ABLATION_SETTINGS = {
    "epochs60": "max_epochs=60",
    "width2048": "width=2048",
    "no_ema": "ema_decay=null",
    "draws16": "noise_draws=16",
    "mmd0.1": "mmd_weight=0.1",
    "px64": "image_size=64 roi_size=16",
    "y0": "prediction_type=sample",
    "y0_no_ema": "prediction_type=sample ema_decay=null",
    "y0_dcg5": "dcg_epochs=5",
    "y0_dcg10": "dcg_epochs=10",
    "y0_lr3e-4": "lr_denoiser=0.0003",
    "y0_eval_priors": "prior_mode=eval",
    "y0_weight10": "prior_error_weight=10",
    "y0_authors_dcg": "dcg_loss_terms=fused dcg_amsgrad=true",
    "y0_all3": "prior_mode=eval prior_error_weight=10 dcg_loss_terms=fused dcg_amsgrad=true",
}
MEDMNIST_SCHEDULE = dict(max_epochs=100, batch_size=128, lr_dcg=0.001, dcg_lr_milestones=[50, 75])
NEW_SETTINGS = {  # never passed by --set
    "basic_medmnist": MEDMNIST_SCHEDULE,
    "y0_medmnist": MEDMNIST_SCHEDULE,
    "y0_crossfit": {"prior_folds": 2},
    "y0_crossfit5": {"prior_folds": 5},
    "y0_crossfit_medmnist": {**MEDMNIST_SCHEDULE, "prior_folds": 2},
    "y0_authors_mmd": {"mmd_bandwidths": "$[@num_classes/2**0.5]"},
}


def test_settings_files_give_the_overrides_gpu_ablation_passed():
    """Each benchmarks/settings/<name>.yaml gives the bundle the values (types included) and the CSV the text that
    gpu_ablation.sh's `--set` gave, and every --setting of the script now has its file and no --set of its own."""
    common = load_script("common")
    files = sorted(p.stem for p in common.SETTINGS.glob("*.yaml"))
    assert files == sorted([*GPU_ABLATION_SETTINGS, *NEW_SETTINGS])
    for name, expected in NEW_SETTINGS.items():
        assert (common.SETTINGS / f"{name}.yaml").read_text().startswith(f"# {name}: "), name
        assert common.setting_overrides(name) == expected
    for name, old in GPU_ABLATION_SETTINGS.items():
        assert (common.SETTINGS / f"{name}.yaml").read_text().startswith(f"# {name}: "), name  # what it tests
        expected = dict(common.parse_override(t) for t in old.split())
        overrides = common.setting_overrides(name)
        assert overrides == expected and [type(v) for v in overrides.values()] == [type(v) for v in expected.values()]
        assert " ".join(common.override_text(k, v) for k, v in overrides.items()) == old
    jobs = (REPO / "benchmarks" / "gpu_ablation.sh").read_text().split("<<EOF\n", 1)[1].split("\nEOF\n", 1)[0]
    jobs = jobs.splitlines()
    assert len(jobs) == 98
    named = [line.split(" --setting ", 1)[1] for line in jobs if " --setting " in line]
    assert len(named) == 86 and set(named) == set(files) and not any("--set " in j for j in jobs)
    assert all("--variant basic" in j for j in jobs if "basic_medmnist" in j)


def test_a_run_is_rebuilt_with_the_configs_and_overrides_it_was_trained_with(tmp_path):
    """sampling_steps.py and diagnostics.py parse a run's network from train_evaluate.py's record in its folder; a
    folder without one (trained before the record) from its name: its recipe and its setting's file."""
    script = load_script("sampling_steps")
    run = tmp_path / "breastmnist_small_full_width2048_seed1"
    (run / "models").mkdir(parents=True)
    (run / "models" / "model.pt").touch()  # Run asks only that it exists; the parser does not read it
    parser = script.load_parser(script.Run(run), "test", {})
    assert (parser["width"], parser["image_size"], parser["seed"], parser["eval_split"]) == (2048, 28, 1, "test")
    record = {"configs": ["configs/train.yaml", "configs/data/breastmnist.yaml"], "overrides": {"width": 64}}
    (run / "run_config.json").write_text(json.dumps(record))
    parser = script.load_parser(script.Run(run), "test", {"num_rois": 2})  # the caller's overrides come last
    assert (parser["width"], parser["image_size"], parser["num_rois"]) == (64, 224, 2)  # train.yaml's 224 px


def test_train_evaluate_merges_the_setting_file_under_set():
    """--tiny's values, then the setting's file, then --set; the overrides column as when --set gave them all."""
    script = load_script("train_evaluate")
    argv = ["--setting", "y0_all3", "--tiny", "--set", "prior_error_weight=3", "progress_bar=false"]
    overrides, text = script.run_overrides(script.parse_args(argv))
    assert overrides == dict(
        script.TINY, prior_mode="eval", prior_error_weight=3, dcg_loss_terms="fused", dcg_amsgrad=True
    ) | {"progress_bar": False}
    assert text == "prior_mode=eval prior_error_weight=10 dcg_loss_terms=fused dcg_amsgrad=true " + (
        "prior_error_weight=3 progress_bar=false"
    )
    # a --set that repeats the file's text is recorded once; a setting without a file adds nothing
    overrides, text = script.run_overrides(script.parse_args(["--setting", "y0", "--set", "prediction_type=sample"]))
    assert (overrides, text) == ({"prediction_type": "sample"}, "prediction_type=sample")
    assert script.run_overrides(script.parse_args(["--setting", "lesion_split"])) == ({}, "")


def test_common_csv_appends_whole_rows_and_resumes_past_a_cut_row(tmp_path):
    """A row cut short is not recorded (measured again), and the next row starts on a line of its own."""
    common = load_script("common")
    path, columns = tmp_path / "rows.csv", ["name", "value"]
    assert common.recorded_rows(path) == [] and common.recorded_keys(path, ["name"]) == set()
    assert common.append_row(path, {"name": "a", "value": 0.5}, columns) == {"name": "a", "value": "0.5"}
    with open(path, "a") as f:
        f.write("b")  # killed mid-row
    assert common.recorded_keys(path, ["name"]) == {("a",)}
    common.append_row(path, {"name": "c, d", "value": 1}, columns)
    assert read_rows(path) == [
        {"name": "a", "value": "0.5"},
        {"name": "b", "value": None},
        {"name": "c, d", "value": "1"},
    ]
    assert [r["name"] for r in common.recorded_rows(path, columns)] == ["a", "c, d"]
    assert common.recorded_keys(path, ["name", "setting"], missing="default") == {("a", "default"), ("c, d", "default")}
    with pytest.raises(SystemExit, match="other columns"):  # appending would misalign
        common.recorded_rows(path, ["name"])
    with pytest.raises(SystemExit, match="other columns"):  # a script that gained a column since the file began
        common.append_row(path, {"name": "e", "value": 2, "new": 3}, [*columns, "new"])
    assert len(read_rows(path)) == 3


def test_test_selection_tiny_run_records_both_splits_per_joint_epoch(tmp_path):
    """benchmarks/test_selection.py --tiny on BreastMNIST: a validation and a test row per joint epoch, resumable."""
    require_data("medmnist/breastmnist.npz")
    script = load_script("test_selection")
    out = tmp_path / "ts.csv"
    args = ["--tiny", "--datasets", "breastmnist", "--out", str(out), "--set", "progress_bar=false"]
    summary = script.main(args)
    rows = read_rows(out)
    assert list(rows[0]) == script.FIELDS
    # 1 warm-up epoch (no validation, as the bundle) and 2 joint epochs
    assert [(r["epoch"], r["split"]) for r in rows] == [
        ("2", "validation"),
        ("2", "test"),
        ("3", "validation"),
        ("3", "test"),
    ]
    for r in rows:
        assert r["key_metric_name"] == "macro_f1" and r["commit"] and r["device"]
        assert all(0.0 <= float(r[m]) <= 1.0 for m in ("accuracy", "macro_f1", "auc", "prior_accuracy", "prior_auc"))
    assert [(s["prediction"], s["selected_by"]) for s in summary] == [
        ("denoised", "denoised"),
        ("prior", "denoised"),
        ("prior", "prior"),
    ]
    assert read_rows(tmp_path / "ts_summary.csv") == [{k: str(v) for k, v in s.items()} for s in summary]
    script.main(args)  # trained: nothing again
    assert read_rows(out) == rows


def test_test_selection_summary_selects_by_validation_and_by_test_with_ties_to_the_earliest(tmp_path):
    script = load_script("test_selection")
    columns = {  # epochs 6-9 of one run; the first joint epoch need not be 1
        ("validation", "macro_f1"): [0.5, 0.7, 0.7, 0.6],  # key metric: tie of 7 and 8 -> 7
        ("validation", "accuracy"): [0.8, 0.8, 0.9, 0.9],  # tie of 8 and 9 -> 8
        ("test", "accuracy"): [0.85, 0.7, 0.75, 0.85],  # the authors' pick: tie of 6 and 9 -> 6
        ("validation", "prior_macro_f1"): [0.6, 0.6, 0.5, 0.5],  # -> 6
        ("validation", "prior_accuracy"): [0.6, 0.7, 0.8, 0.8],  # -> 8
        ("test", "prior_accuracy"): [0.6, 0.9, 0.65, 0.6],  # -> 7
    }
    rows = []
    for i, epoch in enumerate(range(6, 10)):
        for split in ("validation", "test"):
            row = {f: "0.5" for f in script.FIELDS}
            row.update(dataset="toy", seed="0", epoch=str(epoch), split=split, key_metric_name="macro_f1")
            row.update({metric: str(v[i]) for (s, metric), v in columns.items() if s == split})
            rows.append(row)
    rows.append(dict(rows[0], epoch="10"))  # validation without its test row: not counted
    summary = {(r["prediction"], r["selected_by"]): r for r in script.summarize(rows)}

    d = summary[("denoised", "denoised")]
    assert (d["val_key_epoch"], d["val_accuracy_epoch"], d["test_accuracy_epoch"], d["joint_epochs"]) == (7, 8, 6, 4)
    assert float(d["inflation"]) == pytest.approx(0.85 - 0.7)
    assert float(d["inflation_vs_val_accuracy"]) == pytest.approx(0.85 - 0.75)
    assert d["last_epoch_test_accuracy"] == "0.85"
    # the prior at the denoised prediction's epochs: what the bundle's model.pt / the authors' pick hold
    p = summary[("prior", "denoised")]
    assert (p["val_key_epoch"], p["test_accuracy_epoch"]) == (7, 6)
    assert float(p["val_key_test_accuracy"]) == 0.9 and float(p["inflation"]) == pytest.approx(0.6 - 0.9)
    # the prior's own selection
    q = summary[("prior", "prior")]
    assert (q["key_metric"], q["val_key_epoch"], q["val_accuracy_epoch"], q["test_accuracy_epoch"]) == (
        "prior_macro_f1",
        6,
        8,
        7,
    )
    assert float(q["inflation"]) == pytest.approx(0.9 - 0.6)
    assert script.select_epoch([(3, float("nan")), (4, 0.2), (5, 0.2)]) == 4  # NaN never wins; ties: the earliest
    assert "| toy | 0 | denoised | denoised (macro_f1) | 70.0 (ep 7) | 75.0 (ep 8) | 85.0 (ep 6) | +15.0 |" in (
        script.markdown(list(summary.values()))
    )
