"""ImageNet-pretrained DCG trunks: torchvision's ResNet-50 key layout, the download into the cache with its
SHA-256 check, the offline message, train.yaml's default network, and the ImageNet input normalisation."""

import hashlib
import os

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

import scripts.backbone as backbone
from conftest import BUNDLE, bundle_configs
from scripts.backbone import ResNetTrunk, fetch_imagenet_weights, load_backbone_weights, torchvision_to_monai_resnet
from scripts.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageNetNormalized, ScaleBitDepthd

LAYERS, PLANES, EXPANSION = (3, 4, 6, 3), (64, 128, 256, 512), 4  # torchvision's resnet50: Bottleneck x [3, 4, 6, 3]


def batch_norm(prefix: str, channels: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.weight": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.bias": torch.randn(channels, generator=generator),
        f"{prefix}.running_mean": torch.randn(channels, generator=generator),
        f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
        f"{prefix}.num_batches_tracked": torch.tensor(7),
    }


def torchvision_resnet50_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors under the names and shapes of torchvision's ``resnet50().state_dict()``, written out from
    its architecture (no torchvision here): stem, 16 Bottleneck blocks (1x1, 3x3, 1x1 convolutions, each with a
    BatchNorm; a 1x1 convolution + BatchNorm ``downsample`` in each layer's first block), and ``fc``."""
    g = torch.Generator().manual_seed(seed)
    state = {"conv1.weight": torch.randn(64, 3, 7, 7, generator=g), **batch_norm("bn1", 64, g)}
    inplanes = 64
    for layer, (blocks, planes) in enumerate(zip(LAYERS, PLANES, strict=True), start=1):
        for block in range(blocks):
            p = f"layer{layer}.{block}"
            state[f"{p}.conv1.weight"] = torch.randn(planes, inplanes, 1, 1, generator=g)
            state.update(batch_norm(f"{p}.bn1", planes, g))
            state[f"{p}.conv2.weight"] = torch.randn(planes, planes, 3, 3, generator=g)
            state.update(batch_norm(f"{p}.bn2", planes, g))
            state[f"{p}.conv3.weight"] = torch.randn(planes * EXPANSION, planes, 1, 1, generator=g)
            state.update(batch_norm(f"{p}.bn3", planes * EXPANSION, g))
            if block == 0:
                state[f"{p}.downsample.0.weight"] = torch.randn(planes * EXPANSION, inplanes, 1, 1, generator=g)
                state.update(batch_norm(f"{p}.downsample.1", planes * EXPANSION, g))
            inplanes = planes * EXPANSION
    state["fc.weight"] = torch.randn(1000, 2048, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The synthetic torchvision ResNet-50 file: its path, file:// URL, SHA-256 and tensors."""
    state = torchvision_resnet50_state_dict()
    path = tmp_path_factory.mktemp("served") / "resnet50-synthetic.pth"
    torch.save(state, path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"path": path, "url": path.as_uri(), "sha256": sha256, "state": state}


def test_the_hand_written_layout_is_torchvisions_resnet50():
    state = torchvision_resnet50_state_dict()
    assert len(state) == 320  # len(torchvision.models.resnet50().state_dict())
    params = sum(v.numel() for k, v in state.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert params == 25_557_032  # torchvision's documented parameter count of ResNet-50


def test_resnet50_keys_map_exactly_and_the_values_load(weights_file):
    state = weights_file["state"]
    trunk = ResNetTrunk(depth=50, in_channels=3)
    mapped = torchvision_to_monai_resnet(state, 3)
    target = trunk.state_dict()
    assert set(mapped) == set(target)  # one to one: nothing missing, nothing left over (fc dropped)
    assert all(mapped[k].shape == target[k].shape for k in target)
    load_backbone_weights(trunk, str(weights_file["path"]), "torchvision")
    loaded = trunk.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.conv3.weight", "layer3.5.bn2.bias"):
        assert torch.equal(loaded[f"resnet.{key}"], state[key]), key
    assert torch.equal(loaded["resnet.layer4.0.downsample.0.weight"], state["layer4.0.downsample.0.weight"])
    assert torch.equal(loaded["resnet.layer2.0.downsample.1.running_mean"], state["layer2.0.downsample.1.running_mean"])
    assert all(torch.equal(loaded[f"resnet.{k}"], v) for k, v in state.items() if not k.startswith("fc."))
    assert trunk.out_channels == 2048
    grey = load_backbone_weights(ResNetTrunk(depth=50, in_channels=1), str(weights_file["path"]), "torchvision")
    assert torch.allclose(grey.resnet.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    with pytest.raises(ValueError, match="does not match the trunk"):  # a ResNet-50 file into a ResNet-18
        load_backbone_weights(ResNetTrunk(depth=18), str(weights_file["path"]), "torchvision")


def test_download_into_the_cache_then_reuse(weights_file, tmp_path):
    cache = tmp_path / "cache"
    path = fetch_imagenet_weights(weights_file["url"], weights_file["sha256"], str(cache))
    assert path == str(cache / "resnet50-synthetic.pth")
    assert open(path, "rb").read() == weights_file["path"].read_bytes()
    # a file already there is used (its hash checked) without reading the URL
    unreachable = (tmp_path / "gone" / "resnet50-synthetic.pth").as_uri()
    assert fetch_imagenet_weights(unreachable, weights_file["sha256"], str(cache)) == path


def test_a_wrong_hash_is_refused_and_nothing_is_kept(weights_file, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="wrong SHA-256") as raised:
        fetch_imagenet_weights(weights_file["url"], "0" * 64, str(cache))
    assert "nothing was kept" in str(raised.value) and "0" * 64 in str(raised.value)
    assert not (cache / "resnet50-synthetic.pth").exists()
    cache.mkdir(exist_ok=True)
    (cache / "resnet50-synthetic.pth").write_bytes(b"truncated")  # a damaged file in the cache
    with pytest.raises(RuntimeError, match="the existing file .* has the wrong SHA-256.*delete or replace it"):
        fetch_imagenet_weights(weights_file["url"], weights_file["sha256"], str(cache))


def test_offline_error_names_url_path_hash_and_how_to_place_the_file(tmp_path):
    url = (tmp_path / "offline" / "resnet50-0676ba61.pth").as_uri()
    sha256 = "0676ba61" + "f" * 56
    with pytest.raises(RuntimeError) as raised:
        fetch_imagenet_weights(url, sha256, str(tmp_path / "cache"))
    message = str(raised.value)
    expected_path = str(tmp_path / "cache" / "resnet50-0676ba61.pth")
    for part in (url, expected_path, sha256, f"curl -L -o resnet50-0676ba61.pth {url}", "--dcg_pretrained null"):
        assert part in message, part
    assert not os.listdir(tmp_path / "cache") if (tmp_path / "cache").exists() else True
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # printed last by the error summary


def test_the_table_holds_torchvisions_urls_with_hashes_matching_their_file_names():
    for depth, (url, sha256) in backbone.IMAGENET_WEIGHTS.items():
        assert url.startswith("https://download.pytorch.org/models/resnet") and len(sha256) == 64
        assert sha256.startswith(url.rsplit("-", 1)[1].removesuffix(".pth"))  # torch.hub's own check_hash
        assert f"resnet{depth}-" in url


def paper_parser(tmp_path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(bundle_configs("train"))
    values = {"width": 32, "pretrained_cache": str(tmp_path / "cache"), "device": "$torch.device('cpu')"}
    for key, value in {**values, **overrides}.items():
        parser[key] = value
    return parser


def test_train_yaml_initialises_both_dcg_trunks_from_imagenet(weights_file, tmp_path, monkeypatch):
    """The paper recipe's network: ResNet-50 global and local trunks holding the ImageNet file's tensors, a
    2048-channel saliency convolution, and an encoder rho(x) left as initialised."""
    monkeypatch.setitem(backbone.IMAGENET_WEIGHTS, 50, (weights_file["url"], weights_file["sha256"]))
    parser = paper_parser(tmp_path)
    assert parser["global_depth"] == parser["local_depth"] == 50 and parser["dcg_pretrained"] == "imagenet"
    network = parser.get_parsed_content("network")
    state = weights_file["state"]
    for trunk in (network.dcg.global_trunk, network.dcg.local_trunk):
        assert trunk.depth == 50
        assert torch.equal(trunk.resnet.conv1.weight, state["conv1.weight"])
        assert torch.equal(trunk.resnet.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    assert network.dcg.saliency.in_channels == 2048 and network.dcg.mil.attention_v.in_features == 2048
    assert not torch.equal(network.head.encoder.trunk.resnet.conv1.weight[:, :, :7, :7], state["conv1.weight"][:64])
    assert (tmp_path / "cache" / "resnet50-synthetic.pth").is_file()
    # a local file wins over the download (nothing fetched); null trains from scratch
    monkeypatch.setitem(backbone.IMAGENET_WEIGHTS, 50, ((tmp_path / "offline.pth").as_uri(), weights_file["sha256"]))
    local = paper_parser(tmp_path, dcg_weights=str(weights_file["path"]), pretrained_cache=str(tmp_path / "unused"))
    assert torch.equal(local.get_parsed_content("network").dcg.local_trunk.resnet.conv1.weight, state["conv1.weight"])
    scratch = paper_parser(tmp_path, dcg_pretrained=None, pretrained_cache=str(tmp_path / "unused"))
    conv1 = scratch.get_parsed_content("network").dcg.global_trunk.resnet.conv1.weight
    assert not torch.equal(conv1, state["conv1.weight"])
    assert not (tmp_path / "unused").exists()


def test_training_names_the_missing_weights_before_reading_any_data(tmp_path, monkeypatch):
    url = (tmp_path / "offline" / "resnet50-0676ba61.pth").as_uri()
    monkeypatch.setitem(backbone.IMAGENET_WEIGHTS, 50, (url, "0676ba61" + "0" * 56))
    workflow = ConfigWorkflow(
        config_file=bundle_configs("train"),
        workflow_type="train",
        run_id="training",
        bundle_root=str(BUNDLE),
        dataset_dir=str(tmp_path / "no_dataset_here"),  # reading the data would fail differently
        output_dir=str(tmp_path / "eval"),
        model_dir=str(tmp_path / "models"),
        pretrained_cache=str(tmp_path / "cache"),
        width=32,
    )
    workflow.initialize()
    with pytest.raises(Exception) as raised:
        workflow.run()
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any(url in m and "curl -L -o" in m for m in chain), chain[-1]
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


@pytest.mark.parametrize("channels", [3, 1])
def test_imagenet_normalisation_of_8_bit_pixels(channels):
    pixels = np.random.default_rng(0).integers(0, 256, (channels, 5, 6), dtype=np.uint8)
    scaled = ScaleBitDepthd("image")({"image": pixels})  # [-1, 1], as the bundle's preprocessing
    out = ImageNetNormalized("image")(scaled)["image"]
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    if channels == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    expected = (torch.from_numpy(pixels).float() / 255 - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
    assert torch.allclose(torch.as_tensor(out), expected, atol=1e-5)


def test_small_recipe_stays_from_scratch_without_normalisation():
    parser = ConfigParser()
    parser.read_config(bundle_configs("train", "data/breastmnist", "small"))
    assert parser["dcg_pretrained"] is None and parser["input_normalization"] is None
    assert parser["global_depth"] == parser["local_depth"] == 18
    assert parser.get_parsed_content("dcg_pretrained_files") == {}


def test_the_pretrained_switches_as_typed_on_the_command_line(tmp_path):
    """`--dcg_pretrained imagenet` fetches weights as the first step of training (here refused before any data is
    read: no ImageNet file exists for the tests' depth-10 trunks); `--dcg_pretrained null` and
    `--input_normalization null` arrive as strings and mean None: the DCG trains from scratch."""
    from test_user_input import TRAINING, cli, last_error, tiny

    args = tiny(tmp_path)
    at = args.index("--dcg_pretrained")  # the tests' recipe sets it (None); here the command line does
    args = args[:at] + args[at + 2 :] + ["--pretrained_cache", str(tmp_path / "cache")]
    error = last_error(cli("training", TRAINING, *args, "--dcg_pretrained", "imagenet"))
    assert "ImageNet weights exist here for ResNet depths [18, 50], not [10]" in error
    assert not (tmp_path / "models").exists() and not (tmp_path / "cache").exists()

    scratch = ["--dcg_pretrained", "null", "--input_normalization", "null"]
    done = cli("training", TRAINING, *args, *scratch, "--progress_bar", "false")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file() and not (tmp_path / "cache").exists()
