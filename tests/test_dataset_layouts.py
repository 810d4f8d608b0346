"""A user's own dataset without Python: the class-folder, CSV and datalist-JSON layouts (configs/data/folders.yaml,
csv.yaml, datalist_json.yaml), on real images: HAM10000 JPEGs and BreastMNIST written as grayscale PNGs."""

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser
from PIL import Image

from conftest import BUNDLE, TINY, bundle_configs, require_data
from scripts.data import (
    class_folder_datalists,
    datalist_json_datalists,
    folder_datalist,
    labels_csv_datalists,
    layout_class_names,
    save_split,
)
from scripts.options import OPTIONS
from scripts.validation import validate_datalists

SPLITS = ("train", "validation", "test")


def ham_images(per_class: int, classes=("mel", "nv", "bcc")) -> dict[str, list[Path]]:
    """The first ``per_class`` HAM10000 JPEGs of each of ``classes``, by class."""
    data = require_data("ham10000/HAM10000_metadata.csv") / "ham10000"
    chosen: dict[str, list[Path]] = {c: [] for c in classes}
    with open(data / "HAM10000_metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["dx"] in chosen and len(chosen[row["dx"]]) < per_class:
                chosen[row["dx"]].append(data / "images" / f"{row['image_id']}.jpg")
    return chosen


def link(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(source, target)  # never written through: the shared data stay as they are
    return target


def ids(items) -> list[str]:
    return [it["id"] for it in items]


def breast_pngs(root: Path, per_class: int) -> None:
    """BreastMNIST test images as 8-bit grayscale PNGs in class folders, each with a mask beside it."""
    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        images, labels = arrays["test_images"], arrays["test_labels"].reshape(-1)
    for c, name in enumerate(("malignant", "benign")):
        (root / name).mkdir(parents=True)
        for i in np.flatnonzero(labels == c)[:per_class]:
            Image.fromarray(images[i]).save(root / name / f"case{i}.png")
            Image.fromarray((images[i] > 128).astype(np.uint8) * 255).save(root / name / f"case{i}_mask.png")


def test_class_folders_ids_class_names_exclude_and_problems(tmp_path):
    root = tmp_path / "folders"
    for c, files in ham_images(3).items():
        for k, image in enumerate(files):
            below = root / "train" / c / ("more" if k == 2 else "") / image.name  # any depth below the class
            link(image, below)
            Image.new("L", (8, 8)).save(below.with_name(below.stem + "_mask.png"))  # a mask beside the image
        link(files[0], root / "test" / c / files[0].name.replace(".jpg", "_t.jpg"))
    lists = class_folder_datalists(str(root), exclude=["*_mask.png"])
    assert layout_class_names("folders", str(root)) == ["bcc", "mel", "nv"]  # the folders, sorted
    every = [it for s in SPLITS for it in lists[s]]
    assert len(every) == 12 and not any(i.endswith("_mask") for i in ids(every))
    # one identity per file: what inference on the dataset's folder calls it
    listed = {it["image"]: it["id"] for it in folder_datalist(str(root), exclude=["*_mask.png"])}
    assert {it["image"]: it["id"] for it in every} == listed
    assert "train/mel/more/" + ham_images(3)["mel"][2].stem in listed.values()
    assert sorted(ids(lists["test"])) == sorted(i for i in listed.values() if i.startswith("test/"))
    assert len(lists["validation"]) >= 1 and not set(ids(lists["validation"])) & set(ids(lists["train"]))
    for it in every:
        assert ["bcc", "mel", "nv"][it["label"]] == it["id"].split("/")[1]

    given = class_folder_datalists(str(root), ["nv", "mel", "bcc"], ["*_mask.png"])  # the given order
    assert all(["nv", "mel", "bcc"][it["label"]] == it["id"].split("/")[1] for s in SPLITS for it in given[s])

    # a folder that is not a class, a class without images, and an image outside any class folder: one error
    Image.new("RGB", (8, 8)).save(root / "train" / "stray.png")
    found = class_folder_datalists(str(root), ["mel", "nv", "df"], ["*_mask.png"], strict=False)
    with pytest.raises(ValueError) as raised:
        validate_datalists(found, ["mel", "nv", "df"])
    message = str(raised.value)
    assert f"{root / 'train' / 'bcc'}: class folder 'bcc' (3 image(s)) is not one of class_names" in message
    assert f"{root / 'train' / 'stray.png'}: not in a class folder" in message
    assert "class(es) 2 (df) have no training image" in message
    (root / "train" / "stray.png").unlink()
    (root / "notes").mkdir()
    with pytest.raises(ValueError, match=r"notes: a folder beside the split folders \['test', 'train'\]"):
        class_folder_datalists(str(root), exclude=["*_mask.png"])


def test_carved_split_is_stratified_saved_and_reused(tmp_path):
    root, split_file = tmp_path / "flat", tmp_path / "models" / "datalists.json"
    images = ham_images(8)
    for c, files in images.items():
        for image in files:
            link(image, root / c / image.name)
    lists = class_folder_datalists(str(root), split_file=str(split_file))
    sets = [set(ids(lists[s])) for s in SPLITS]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]) and len(set.union(*sets)) == 24
    for split in ("validation", "test"):  # stratified: every class in the held-out splits
        assert set(Counter(it["label"] for it in lists[split])) == {0, 1, 2}, split
    other_seed = class_folder_datalists(str(root), seed=1)  # split_seed fixes the test split, not seed
    assert ids(other_seed["test"]) == ids(lists["test"]) and ids(other_seed["validation"]) != ids(lists["validation"])

    assert save_split(lists, str(split_file), str(root), ["bcc", "mel", "nv"]) == str(split_file)
    saved = json.loads(split_file.read_text())
    assert saved["class_names"] == ["bcc", "mel", "nv"] and len(saved["test"]) == len(lists["test"])
    assert saved["test"][0]["image"] == saved["test"][0]["id"] + ".jpg"  # relative to the dataset folder
    assert save_split(lists, str(split_file), str(root), ["bcc", "mel", "nv"]) is None  # written once

    # new images do not reshuffle the split: the same images are held out, the new one is left out
    link(ham_images(9)["nv"][8], root / "nv" / "added.jpg")
    again = class_folder_datalists(str(root), seed=5, split_file=str(split_file))
    assert all(ids(again[s]) == ids(lists[s]) for s in SPLITS)
    assert (
        layout_class_names("folders", str(tmp_path / "elsewhere"), split_file=str(split_file)) == saved["class_names"]
    )
    # a saved image that is gone, and class names in another order: named, with what to do
    gone = root / (lists["test"][0]["id"] + ".jpg")
    gone.unlink()
    found = class_folder_datalists(str(root), ["nv", "mel", "bcc"], split_file=str(split_file), strict=False)
    message = "\n".join(found["problems"])
    assert f"{split_file}: 1 image(s) of the split saved when training began are not in {root}" in message
    assert str(gone.relative_to(root)) in message and "another --model_dir" in message
    assert "differ from ['bcc', 'mel', 'nv'], those of the split saved" in message


def test_csv_layout_ids_are_inference_ids_labels_splits_and_groups(tmp_path):
    root = tmp_path / "csv"
    rows = [("image", "label", "split", "group")]
    for c, (dx, files) in enumerate(ham_images(6).items()):
        for k, image in enumerate(files):
            link(image, root / "images" / dx / image.name)
            rows.append((f"images/{dx}/{image.name}", str(c * 5), "test" if k == 0 else "", f"p{c}{k // 2}"))
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    lists = labels_csv_datalists(str(root))
    assert layout_class_names("csv", str(root)) == ["0", "5", "10"]  # numbers sorted by value
    inference_ids = {it["image"]: it["id"] for it in folder_datalist(str(root))}
    for split in SPLITS:
        for it in lists[split]:
            assert it["id"] == inference_ids[it["image"]]  # the same image, the same id, the same noise
    assert len(lists["test"]) == 3 and all(
        it["source"].endswith(" row " + str(2 + 6 * it["label"])) for it in lists["test"]
    )
    group = {r[0].split("/")[-1].removesuffix(".jpg"): r[3] for r in rows[1:]}
    kept = {group[i.split("/")[-1]] for i in ids(lists["train"])}
    assert lists["validation"] and not kept & {group[i.split("/")[-1]] for i in ids(lists["validation"])}

    split_file = tmp_path / "models" / "datalists.json"
    save_split(lists, str(split_file), str(root), ["0", "5", "10"])
    trained = lists["train"][0]
    line = int(trained["source"].rsplit(" ", 1)[1])
    moved = [list(r) for r in rows]
    moved[line - 1][2] = "test"  # a training image declared a test image after training began
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(moved)
    found = labels_csv_datalists(str(root), split_file=str(split_file), strict=False)
    assert found["problems"] == [
        f"{trained['source']}: in test now but in train in {split_file}, the split saved when training began"
    ]
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with open(root / "labels.csv", "a", newline="") as f:
        csv.writer(f).writerows(
            [(rows[1][0], "0", "", ""), (rows[2][0].replace("images", "x"), "7", "", ""), ("b.png", "0", "later", "")]
        )
    found = labels_csv_datalists(str(root), ["0", "5", "10"], strict=False)  # default: every label is a class
    assert found["problems"] == [
        f"{root / 'labels.csv'} row 20: {rows[1][0]!r} is listed again (first on row 2)",
        f"{root / 'labels.csv'} row 21: unknown label '7' (expected one of ['0', '5', '10'])",
        f"{root / 'labels.csv'} row 22: split 'later' is not train, val, validation or test (or empty)",
    ]


def test_datalist_json_layout_reads_monai_datalists(tmp_path):
    root = tmp_path / "json"
    entries: dict[str, list] = {"training": [], "test": []}
    for dx, files in ham_images(5, ("df", "vasc")).items():
        for k, image in enumerate(files):
            link(image, root / dx / image.name)  # a folder named like the label: MONAI would make it a path
            entries["test" if k == 0 else "training"].append({"image": f"{dx}/{image.name}", "label": dx})
    (root / "datalist.json").write_text(json.dumps(entries))
    lists = datalist_json_datalists(str(root))
    assert layout_class_names("datalist_json", str(root)) == ["df", "vasc"]
    assert sorted(ids(lists["test"])) == sorted(e["image"][:-4] for e in entries["test"])
    assert len(lists["validation"]) >= 1 and len(lists["train"]) + len(lists["validation"]) == 8
    assert all(it["label"] == ["df", "vasc"].index(it["id"].split("/")[0]) for s in SPLITS for it in lists[s])
    assert lists["test"][0]["image"] == str(root / entries["test"][0]["image"])
    entries["training"][1]["label"] = "nv"
    (root / "datalist.json").write_text(json.dumps(entries))
    found = datalist_json_datalists(str(root), ["df", "vasc"], strict=False)
    assert found["problems"] == [
        f"{root / 'datalist.json'} training[1]: unknown label 'nv' (expected one of ['df', 'vasc'])"
    ]


def test_layout_options_convert_from_the_command_line(tmp_path):
    # as Python Fire hands them over: --exclude "[*_mask.png]", --class_names a,b, --class_names "[0, 1]"
    assert OPTIONS["exclude"].convert("exclude", "[*_mask.png]") == (["*_mask.png"], None)
    assert OPTIONS["exclude"].convert("exclude", []) == ([], None)
    assert OPTIONS["class_names"].convert("class_names", ("benign", "malignant")) == (["benign", "malignant"], None)
    assert OPTIONS["class_names"].convert("class_names", [0, 1]) == (["0", "1"], None)
    assert OPTIONS["test_fraction"].convert("test_fraction", "0.25") == (0.25, None)
    assert OPTIONS["split_file"].convert("split_file", "null") == (None, None)
    parser = ConfigParser()  # every layout overlay merges onto train.yaml and evaluate.yaml
    for layout in ("folders", "csv", "datalist_json"):
        parser.read_config(bundle_configs("train", f"data/{layout}", "small", "evaluate"))
        assert {"class_names", "split_file", "source_datalists", "test_fraction"} <= set(parser.get())


def cli(run_id: str, configs: list[str], *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(configs), *args]
    env = dict(os.environ, DIFFMIC_DATA_DIR=str(require_data("medmnist/breastmnist.npz")))
    done = subprocess.run(command, cwd=BUNDLE, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_a_folder_of_grayscale_pngs_validates_trains_and_evaluates_with_one_command(tmp_path):
    """The user's commands: class folders with masks beside the images, no split folders, grayscale PNGs."""
    root, models = tmp_path / "my_data", tmp_path / "models"
    breast_pngs(root, per_class=8)
    configs = ["configs/train.yaml", "configs/data/folders.yaml", "configs/small.yaml"]
    recipe = [a for key, value in TINY.items() for a in (f"--{key}", str(value))]
    common = [*recipe, "--dataset_dir", str(root), "--model_dir", str(models), "--batch_size", "4"]
    options = ["--exclude", "[*_mask.png]", "--class_names", "malignant,benign"]  # as typed on a command line

    checked = cli("validate_data", configs, *common, *options, "--output_dir", str(tmp_path / "eval"))
    assert "datalists checked: no problems found" in checked.stdout and "malignant" in checked.stdout
    assert not (models / "datalists.json").exists()  # checking writes nothing
    cli("training", configs, *common, *options, "--output_dir", str(tmp_path / "eval"))
    saved = json.loads((models / "datalists.json").read_text())
    assert (models / "model.pt").is_file() and saved["class_names"] == ["malignant", "benign"]

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(root / "benign" / "added_later.png")
    out = tmp_path / "test"
    cli(
        "evaluating",
        [*configs, "configs/evaluate.yaml"],
        *common,
        "--exclude",
        "[*_mask.png]",
        "--output_dir",
        str(out),
    )
    with open(out / "predictions.csv", newline="") as f:
        tested = {row["id"]: row for row in csv.DictReader(f)}
    assert sorted(tested) == sorted(e["id"] for e in saved["test"])  # the split training saved, not a new one
    report = json.loads((out / "metrics.json").read_text())
    assert report["class_names"] == ["malignant", "benign"] and report["num_images"] == len(saved["test"])

    # inference on the dataset's folder (class names from the saved split): the same ids, so the same noise
    inferred = tmp_path / "inference"
    network = [
        a for key in ("width", "encoder_depth", "global_depth", "local_depth") for a in (f"--{key}", str(TINY[key]))
    ]
    places = ["--dataset_dir", str(root), "--model_dir", str(models), "--output_dir", str(inferred)]
    cli("run", ["configs/inference.yaml", "configs/data/folders.yaml", "configs/small.yaml"], *network, *places)
    with open(inferred / "predictions.csv", newline="") as f:
        classified = {row["id"]: row for row in csv.DictReader(f)}
    for image_id, row in tested.items():
        assert classified[image_id]["prob_benign"] == row["prob_benign"], image_id


def test_every_layout_overlay_gives_the_same_dataset_the_same_ids_and_classes(tmp_path):
    """One folder of grayscale PNGs read through each overlay, as `run validate_data` builds the datalists."""
    root = tmp_path / "data"
    breast_pngs(root, per_class=5)
    images = sorted(p.relative_to(root).as_posix() for p in root.rglob("case*.png") if "_mask" not in p.name)
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "label"), *((i, i.split("/")[0]) for i in images)])
    training = [{"image": i, "label": i.split("/")[0]} for i in images]
    (root / "datalist.json").write_text(json.dumps({"training": training}))
    found = {}
    for layout in ("folders", "csv", "datalist_json"):
        parser = ConfigParser()
        parser.read_config(bundle_configs("train", f"data/{layout}", "small"))
        parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(root), "model_dir": str(tmp_path / "models")})
        parser["exclude"] = ["*_mask.png"]
        assert parser.get_parsed_content("class_names") == ["benign", "malignant"]
        lists = parser.get_parsed_content("datalists")  # checked: every file decoded
        found[layout] = {s: sorted(ids(lists[s])) for s in SPLITS}
    assert found["folders"] == found["csv"] == found["datalist_json"]  # the same carving of the same images
    assert sum(len(v) for v in found["csv"].values()) == 10 and all(found["csv"].values())
