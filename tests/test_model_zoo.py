"""The model zoo's checks on the bundle (network in/out, TorchScript export) and MONAI Deploy's calling convention."""

import json
import shlex
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import ensure_tuple

from conftest import BUNDLE, TINY, require_data
from scripts.checkpoint import load_weights
from scripts.inferer import ID_META_KEY, DiffMICInferer

NETWORK = {k: v for k, v in TINY.items() if k in ("width", "encoder_depth", "global_depth", "local_depth")}
INFERENCE = ["configs/inference.yaml", "configs/data/breastmnist.yaml", "configs/small.yaml"]
META = "configs/metadata.json"


def monai_bundle(*args: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` from the bundle folder, as the model zoo's CI runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=BUNDLE, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def breastmnist_test_images(count: int) -> torch.Tensor:
    """The first real BreastMNIST test images, scaled to [-1, 1] as the bundle's preprocessing does."""
    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        images = arrays["test_images"][:count]
    return torch.from_numpy(images).float().div(255).mul(2).sub(1)[:, None]


def eager_network(checkpoint) -> torch.nn.Module:
    """The inference config's network (BreastMNIST, small recipe, the tests' sizes) with the checkpoint."""
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / c) for c in INFERENCE])
    parser.update(NETWORK)
    return load_weights(parser.get_parsed_content("network_def"), str(checkpoint), "cpu").eval()


@pytest.fixture(scope="module")
def exported(trained_bundle, tmp_path_factory):
    """The test session's checkpoint exported with the model zoo's command; the path of model.ts."""
    path = tmp_path_factory.mktemp("export") / "model.ts"
    overrides = [arg for k, v in NETWORK.items() for arg in (f"--{k}", str(v))]
    checkpoint = trained_bundle["dir"] / "models" / "model.pt"
    monai_bundle(
        "ckpt_export", "network_def", "--filepath", str(path), "--ckpt_file", str(checkpoint),
        "--meta_file", META, "--config_file", str(INFERENCE), *overrides,
    )  # fmt: skip
    return path


def test_verify_net_in_out_passes_and_checks_the_denoised_prediction():
    """The model zoo's shape check passes; the output it checks (forward) is the reverse chain's denoised
    label vector, not the DCG prior."""
    monai_bundle("verify_net_in_out", "network_def", "--meta_file", META, "--config_file", "configs/inference.yaml")
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.yaml"))
    parser.read_meta(str(BUNDLE / META))
    network = parser.get_parsed_content("network_def").eval()
    pred = parser.get_parsed_content("_meta_#network_data_format#outputs#pred")
    images = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 1, network.chain_noise_draws(), 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, parts = network(images, noise), network.predict(images, noise)
    assert out.shape == (2, pred["num_channels"]) and len(pred["channel_def"]) == pred["num_channels"]
    assert torch.equal(out, parts["denoised"][:, 0])
    assert not torch.allclose(out, parts["fused"], atol=1e-3)  # the prior is where the chain starts, not its end


def test_torchscript_export_runs_the_whole_reverse_sampling_like_the_eager_model(exported, trained_bundle):
    """model.ts: the guidance, the encoder, the denoiser and the sampling chain all in TorchScript; through
    the bundle's inferer (3 samples, noise seeded per image id) it gives the eager model's results."""
    scripted = torch.jit.load(str(exported))
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert isinstance(scripted.predict, torch.ScriptMethod)
    assert isinstance(scripted.chain_noise_draws, torch.ScriptMethod)
    eager = eager_network(trained_bundle["dir"] / "models" / "model.pt")
    images, inferer = breastmnist_test_images(24), DiffMICInferer(seed=0, num_samples=3)
    ids = [f"test_{i}" for i in range(24)]
    with torch.no_grad():
        expected, got = inferer.outputs(images, eager, ids), inferer.outputs(images, scripted, ids)
        noise = inferer.noise(ids[:4], 1, 2, torch.device("cpu"))[:, :1]
        torch.testing.assert_close(scripted(images[:4], noise), eager(images[:4], noise))  # forward: one chain
    assert set(got) == set(expected)
    for key in ("denoised", "probs", "fused", "global", "local", "saliency", "rois", "entropy"):
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    assert not torch.allclose(got["probs"], got["fused"], atol=1e-3)
    extra = {"metadata.json": "", "inference.json": "", "breastmnist.json": "", "small.json": ""}
    torch.jit.load(str(exported), _extra_files=extra)
    assert json.loads(extra["metadata.json"])["version"] == json.loads((BUNDLE / META).read_text())["version"]
    assert json.loads(extra["breastmnist.json"])["class_names"] == ["malignant", "normal_or_benign"]


def test_inference_postprocessing_gives_the_class_index_beside_the_probabilities(trained_bundle, tmp_path):
    """inference.yaml's evaluator decollates and post-processes each image: ``pred`` keeps the probabilities
    (MONAI Label's scores), ``pred_label`` is their argmax."""
    from ignite.engine import Events
    from PIL import Image

    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        for i, pixels in enumerate(arrays["test_images"][:5]):
            Image.fromarray(pixels).save(tmp_path / f"image_{i}.png")
    parser = ConfigParser()
    parser.read_config([str(BUNDLE / c) for c in INFERENCE])
    parser.update(dict(NETWORK, dataset_dir=str(tmp_path), output_dir=str(tmp_path / "out"), num_workers=0))
    parser.update({"ckpt_path": str(trained_bundle["dir"] / "models" / "model.pt"), "device": "$torch.device('cpu')"})
    evaluator, items = parser.get_parsed_content("evaluator"), []
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: items.extend(engine.state.output))
    evaluator.run()
    assert len(items) == 5
    for item in items:
        assert item["pred"].shape == (2,) and float(item["pred"].sum()) == pytest.approx(1.0, abs=1e-5)
        assert item["pred_label"].shape == (1,) and int(item["pred_label"]) == int(item["pred"].argmax())


def test_deploy_bundle_operator_calling_convention(exported, trained_bundle, tmp_path):
    """What MONAI Deploy's MonaiBundleInferenceOperator (app SDK 4.0) does with model.ts, step by step: the
    configs from the archive, the preprocessing without LoadImage on an in-memory image, the inferer called
    with keyword arguments and the TorchScript module, the first output of the batch post-processed by
    ``deploy_postprocessing`` into a class index. The SDK itself (holoscan, tritonclient) is not in this
    environment: tests/test_monai_deploy.py runs integrations/monai_deploy's app with it; this test follows
    its code. ``deploy_preprocessing`` keeps the image's metadata (the operator reads it); with the model
    given by ``-m``, the operator hands the inferer its model object (``TorchScriptModel``, the module as
    ``predictor``); the image id in the metadata (``ID_META_KEY``) seeds the noise as ``monai.bundle run``."""
    names = ["inference", "breastmnist", "small"]  # BundleConfigNames(config_names=...): merged in this order
    with zipfile.ZipFile(exported) as archive:
        archive.extractall(tmp_path, members=[f"model/extra/{n}.json" for n in [*names, "metadata"]])
    extra = tmp_path / "model" / "extra"
    parser = ConfigParser()
    parser.read_meta(str(extra / "metadata.json"))
    parser.read_config([str(extra / f"{n}.json") for n in names])
    parser.update(NETWORK)  # the tests' network sizes (the exported configs hold the overrides' defaults)
    parser.parse()
    inferer = parser.get_parsed_content("inferer")
    postprocessing = parser.get_parsed_content("deploy_postprocessing")
    scripted = torch.jit.load(str(exported), map_location="cpu").eval()

    class TorchScriptModel:  # the SDK's model object, as app_context.models gives it
        predictor = scripted

    with np.load(require_data("medmnist/breastmnist.npz") / "medmnist" / "breastmnist.npz") as arrays:
        pixels = arrays["test_images"][:6]
    eager = eager_network(trained_bundle["dir"] / "models" / "model.pt")
    for name, network in (("preprocessing", scripted), ("deploy_preprocessing", TorchScriptModel())):
        preprocessing = parser.get_parsed_content(name)
        preprocessing = Compose([t for t in preprocessing.transforms if not type(t).__name__.startswith("LoadImage")])
        for index, image in enumerate(pixels):
            meta = {"original_channel_dim": "no_channel", ID_META_KEY: f"breastmnist_test_{index}"}
            inputs = preprocessing({"image": MetaTensor(image, meta=meta)})
            first_input = inputs.pop("image")[None]
            assert isinstance(first_input, MetaTensor) == (name == "deploy_preprocessing")  # the SDK reads .meta
            with torch.no_grad():
                outputs = inferer(inputs=first_input, network=network)
                scaled = torch.from_numpy(image).float().div(127.5).sub(1)[None, None]
                ids = [meta[ID_META_KEY]] if name == "deploy_preprocessing" else None  # else seeded as id "0"
                expected = DiffMICInferer(seed=0).outputs(scaled, eager, ids)
            result = postprocessing({"pred": ensure_tuple(outputs)[0], **inputs})
            assert result["pred"].shape == (1,) and int(result["pred"].item()) == int(expected["probs"].argmax())
            torch.testing.assert_close(torch.as_tensor(outputs), expected["probs"], rtol=1e-4, atol=1e-5)


def test_the_readme_export_commands_work_on_the_model_the_first_command_trains(trained_bundle, tmp_path):
    """The README's verify_net_in_out and ckpt_export lines, as written, on a BreastMNIST small-recipe model
    (the tests' sizes appended; the model's paths swapped for the test session's)."""
    lines = [
        line
        for line in (BUNDLE.parent / "README.md").read_text().splitlines()
        if line.startswith("python -m monai.bundle ") and " network_def " in line
    ]
    assert [line.split()[3] for line in lines] == ["verify_net_in_out", "ckpt_export"]
    overrides = [arg for k, v in NETWORK.items() for arg in (f"--{k}", str(v))]
    model = str(trained_bundle["dir"] / "models" / "model.pt")
    for line in lines:
        args = [model if a == "models/model.pt" else a for a in shlex.split(line)[3:]]
        args = [str(tmp_path / "model.ts") if a == "models/model.ts" else a for a in args]
        monai_bundle(*args, *overrides)
    assert (tmp_path / "model.ts").stat().st_size > 100_000
