"""Faults a user meets: bad data, mismatching or untrusted checkpoints, a diverging loss. Each gives a clear
error that names the file, row, key or iteration, or works as documented; none runs a training step first."""

import csv
import logging
import os

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser
from monai.engines import IterationEvents
from PIL import Image

from conftest import BUNDLE, bundle_configs, ham_subset, require_data
from scripts.checkpoint import load_checkpoint, load_weights
from scripts.engine import DiffMICTrainer
from scripts.network import DiffMIC
from scripts.validation import validate_datalists


def ham_parser(root, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "data/ham10000"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(root), **overrides})
    return parser


def datalists_error(parser: ConfigParser) -> str:
    """The message of the error that parsing ``datalists`` raises (the config parser wraps it)."""
    with pytest.raises(RuntimeError, match="Failed to evaluate") as raised:
        parser.get_parsed_content("datalists")
    assert isinstance(raised.value.__cause__, ValueError), raised.value.__cause__
    return str(raised.value.__cause__)


def rewrite_csv(path, edit) -> None:
    """Rewrites a CSV through ``edit(header, rows) -> (header, rows)``."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = edit(list(reader.fieldnames), list(reader))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def ham_copy(tmp_path):
    """A 40-image copy of HAM10000 (4 training images per class, 12 test images), files copied."""
    return ham_subset(tmp_path, require_data("ham10000/HAM10000_metadata.csv"), copy=True)


def test_every_data_problem_is_listed_in_one_error_before_training(ham_copy):
    root, meta = ham_copy
    ids = list(meta)
    train_ids = [i for i in ids if meta[i]["dx"] == "vasc"]  # the 4 training images of one class
    os.remove(root / "images" / f"{ids[0]}.jpg")  # missing file
    data = (root / "images" / f"{ids[1]}.jpg").read_bytes()
    (root / "images" / f"{ids[1]}.jpg").write_bytes(data[: len(data) // 3])  # truncated JPEG
    (root / "images" / f"{ids[2]}.jpg").write_bytes(b"")  # zero bytes

    def labels(header, rows):
        for r in rows:
            if r["image_id"] == ids[3]:
                r["dx"] = "melanoma"  # not one of the class names
            if r["image_id"] in train_ids:
                r["dx"] = "df"  # vasc loses its training images
        return header, rows

    rewrite_csv(root / "HAM10000_metadata.csv", labels)
    test_id = next(i for i in reversed(ids) if i not in train_ids)
    rewrite_csv(root / "diffmic_split.csv", lambda h, rows: (h, rows + [{"image_id": test_id, "split": "train"}]))

    message = datalists_error(ham_parser(root))
    split_csv = root / "diffmic_split.csv"
    assert "HAM10000_metadata.csv row" in message and "unknown label 'melanoma'" in message
    assert f"{test_id!r} is listed again" in message and str(split_csv) in message
    assert f"{ids[0]}.jpg: file not found" in message
    assert f"{ids[1]}.jpg: cannot be decoded" in message and "truncated" in message
    assert f"{ids[2]}.jpg: empty file (0 bytes)" in message
    assert "class(es) 6 (vasc) have no training image" in message
    assert message.count(f"{split_csv} row") >= 3  # image problems name their CSV row
    assert message.startswith("6 problem(s)")


def test_empty_split_and_misspelt_column(ham_copy):
    root, _ = ham_copy
    rewrite_csv(root / "diffmic_split.csv", lambda h, rows: (h, [r for r in rows if r["split"] == "train"]))
    assert "split 'test' is empty" in datalists_error(ham_parser(root))
    rewrite_csv(
        root / "HAM10000_metadata.csv",
        lambda h, rows: (["dxx" if c == "dx" else c for c in h], [{**r, "dxx": r["dx"]} for r in rows]),
    )
    message = datalists_error(ham_parser(root))
    assert "missing column(s) ['dx']" in message and "'dx' (did you mean 'dxx'?)" in message


def test_labels_outside_the_classes_and_ids_in_two_splits():
    image = np.zeros((8, 8), np.uint8)
    lists = {
        "train": [{"image": image, "label": 0, "id": "a"}, {"image": image, "label": 1, "id": "b"}],
        "validation": [{"image": image, "label": 7, "id": "c"}],  # a grade beyond the 2 classes
        "test": [{"image": image, "label": 1, "id": "a"}],  # the training image "a" again
    }
    with pytest.raises(ValueError) as raised:
        validate_datalists(lists, ["benign", "malignant"])
    assert "validation image 'c': label 7 is not a class index in [0, 2)" in str(raised.value)
    assert "id 'a' is in both train and test" in str(raised.value)


def test_unreadable_images_can_be_skipped_with_a_warning(ham_copy, caplog):
    root, meta = ham_copy
    bad = next(i for i in meta if meta[i]["dx"] == "nv")
    (root / "images" / f"{bad}.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING):
        lists = ham_parser(root, on_bad_image="skip").get_parsed_content("datalists")
    assert bad not in {it["id"] for split in lists.values() for it in split}
    assert sum(len(v) for v in lists.values()) == len(meta) - 1
    assert "leaving out 1 unreadable image(s)" in caplog.text and f"{bad}.jpg" in caplog.text


def test_mixed_channels_and_bit_depths_are_converted(tmp_path):
    """Grayscale, RGB, RGBA, palette and 16-bit PNGs all become 3 x 32 x 32 images in [-1, 1]."""
    ramp = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    images = {
        "gray": Image.fromarray(ramp),
        "rgb": Image.fromarray(np.stack([ramp] * 3, -1)),
        "rgba": Image.fromarray(np.stack([ramp] * 3 + [np.full_like(ramp, 128)], -1)),
        "palette": Image.fromarray(np.stack([ramp] * 3, -1)).convert("P", palette=Image.Palette.ADAPTIVE),
        "gray16": Image.fromarray(ramp.astype(np.uint16) * 257),
    }
    for name, image in images.items():
        image.save(tmp_path / f"{name}.png")
    parser = ConfigParser()
    parser.read_config(bundle_configs("train"))
    parser.update({"bundle_root": str(BUNDLE), "image_size": 32, "input_normalization": None})  # on [-1, 1]
    transform = parser.get_parsed_content("validate#preprocessing")
    out = {name: transform({"image": str(tmp_path / f"{name}.png")})["image"] for name in images}
    for name, image in out.items():
        assert image.shape == (3, 32, 32) and image.dtype == torch.float32, name
        assert -1.0 <= float(image.min()) and float(image.max()) <= 1.0, name
    assert torch.allclose(out["gray16"], out["gray"], atol=1e-5)  # the same picture at 16 bits
    assert torch.allclose(out["rgba"], out["rgb"]) and torch.allclose(out["rgb"], out["gray"], atol=1e-5)
    assert float(out["gray"].max()) > 0.5 and float(out["gray"].min()) < -0.5  # the crop keeps most of the ramp
    assert torch.allclose(out["palette"], out["rgb"], atol=1e-5)  # 40 grey levels fit the palette exactly


def tiny_network(num_classes: int = 2, width: int = 16) -> DiffMIC:
    trunk = {"depth": 10, "stem_kernel": 3, "stem_stride": 1, "stem_max_pool": False}
    guidance = {"global_trunk": trunk, "local_trunk": trunk, "num_rois": 2, "roi_size": 6}
    return DiffMIC(num_classes, 1, guidance=guidance, width=width, encoder={"trunk": trunk}, ema_decay=0.9)


def test_a_checkpoint_of_another_config_lists_the_keys_that_do_not_fit(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(tiny_network(2).state_dict(), path)
    load_weights(tiny_network(2), str(path))  # the same config loads
    with pytest.raises(ValueError) as raised:
        load_weights(tiny_network(3), str(path))  # class_names with 3 classes
    message = str(raised.value)
    assert f"{path} does not fit the network of this config" in message and "class_names/num_classes" in message
    assert "dcg.saliency.weight: checkpoint (2, 512, 1, 1), network (3, 512, 1, 1)" in message
    with pytest.raises(ValueError, match="head.denoiser"):
        load_weights(tiny_network(2, width=32), str(path))


class RunsCode:
    """What a malicious checkpoint holds: unpickling it calls a function of the attacker's choosing."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_untrusted_or_damaged_checkpoints_are_refused_without_running_them(tmp_path):
    marker = tmp_path / "the_pickle_ran"
    planted = tmp_path / "planted.pt"
    torch.save({"weights": torch.zeros(2), "payload": RunsCode(marker)}, planted)
    with pytest.raises(ValueError, match=rf"{planted} was refused: .*loading it could run code"):
        load_checkpoint(str(planted))
    assert not marker.exists()
    truncated = tmp_path / "truncated.pt"
    torch.save(tiny_network().state_dict(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(str(truncated))
    with pytest.raises(FileNotFoundError, match="missing.pt not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def nan_trainer(on_nonfinite: str) -> tuple[DiffMICTrainer, DiffMIC]:
    network = tiny_network()
    good = {"image": torch.randn(4, 1, 16, 16), "label": torch.tensor([0, 1, 0, 1])}
    bad = {"image": good["image"].clone(), "label": good["label"]}
    bad["image"][0, 0, 0, 0] = float("nan")
    trainer = DiffMICTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=[good, bad, good],
        network=network,
        optimizer=torch.optim.Adam(network.head.parameters(), 1e-3),
        dcg_optimizer=torch.optim.Adam(network.dcg.parameters(), 1e-3),
        loss_function=torch.nn.CrossEntropyLoss(),
        warmup_epochs=0,
        on_nonfinite=on_nonfinite,
        decollate=False,
    )
    return trainer, network


def test_a_non_finite_loss_stops_training_naming_where_or_skips_the_step():
    trainer, network = nan_trainer("stop")
    with pytest.raises(
        FloatingPointError, match=r"non-finite loss at epoch 1, iteration 2 \(2 of the epoch\): loss_ce"
    ):
        trainer.run()

    trainer, network = nan_trainer("skip")
    weights, events = [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: weights.append(network.dcg.saliency.weight.clone()))
    for event in (IterationEvents.LOSS_COMPLETED, IterationEvents.BACKWARD_COMPLETED):
        trainer.add_event_handler(event, lambda e, name=event.name[0]: events.append(name))
    trainer.run()
    assert trainer.skipped_steps == 1 and trainer.state.iteration == 3
    assert "".join(events) == "LBLB" + "L" + "LBLB"  # the skipped DCG step computed its loss, took no backward
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])
    assert all(torch.isfinite(t).all() for t in [*network.parameters(), *network.buffers()])  # BN stats too


def test_validate_data_run_key_prints_the_checked_counts(ham_copy, capsys):
    """`run validate_data` checks everything up front and prints images per split and class."""
    from monai.bundle import ConfigWorkflow

    root, meta = ham_copy
    workflow = ConfigWorkflow(
        config_file=bundle_configs("train", "data/ham10000"),
        workflow_type=None,
        run_id="validate_data",
        bundle_root=str(BUNDLE),
        dataset_dir=str(root),
    )
    workflow.initialize()
    workflow.run()
    printed = capsys.readouterr().out
    assert "datalists checked: no problems found" in printed
    assert printed.splitlines()[-1].split()[0] == "total"
    assert sum(int(n) for n in printed.splitlines()[-1].split()[1:]) == len(meta)


def test_validate_data_suggests_the_class_weighting_options_for_imbalanced_training_classes():
    from scripts.validation import summarize_datalists

    def split(counts):
        return [{"label": c} for c, n in enumerate(counts) for _ in range(n)]

    text = summarize_datalists({"train": split([9, 3]), "validation": split([1, 1])}, ["benign", "malignant"])
    assert "imbalanced (3.0:1, benign to malignant): --class_weighted_loss true" in text
    assert "imbalanced" not in summarize_datalists({"train": split([5, 3])}, ["benign", "malignant"])


def test_inference_datalist_files_csv_and_json(tmp_path):
    """`--datalist` for inference: a CSV or JSON list of images, relative to the list; problems with rows."""
    from scripts.data import folder_datalist, read_datalist

    (tmp_path / "scans").mkdir()
    for name in ("a.png", "b.png"):
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "scans" / name)
    (tmp_path / "list.csv").write_text("image,id\nscans/a.png,first\nscans/b.png,\n")
    assert read_datalist(str(tmp_path / "list.csv")) == [
        {"image": str(tmp_path / "scans" / "a.png"), "id": "first"},
        {"image": str(tmp_path / "scans" / "b.png"), "id": "b"},
    ]
    (tmp_path / "list.json").write_text('{"data": [{"image": "scans/b.png"}]}')
    assert read_datalist(str(tmp_path / "list.json")) == [{"image": str(tmp_path / "scans" / "b.png"), "id": "b"}]
    (tmp_path / "bad.csv").write_text("image\nscans/a.png\nscans/missing.png\nscans/a.png\n")
    with pytest.raises(ValueError, match=r"bad.csv row 3: image file .*missing.png not found"):
        read_datalist(str(tmp_path / "bad.csv"))
    (tmp_path / "twice.csv").write_text("image\nscans/a.png\nscans/a.png\n")
    with pytest.raises(ValueError, match="share the id 'a'"):
        read_datalist(str(tmp_path / "twice.csv"))
    assert [it["id"] for it in folder_datalist(str(tmp_path / "scans"))] == ["a", "b"]
