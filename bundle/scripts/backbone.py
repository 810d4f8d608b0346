"""ResNet trunks built on MONAI's ResNet; their initial weights from local files or torchvision's ImageNet files."""

from __future__ import annotations

import os

import torch
from monai.apps.utils import HashCheckError, download_url
from monai.networks.nets.resnet import ResNet, resnet_params
from torch import nn

__all__ = [
    "IMAGENET_WEIGHTS",
    "ResNetTrunk",
    "fetch_imagenet_weights",
    "fetch_pretrained",
    "load_backbone_weights",
    "load_pretrained",
    "torchvision_to_monai_resnet",
]

# torchvision's ResNet IMAGENET1K_V1 files (torchvision.models.ResNet{18,50}_Weights.IMAGENET1K_V1) by depth:
# URL and full SHA-256 (its first 8 hex digits are the tag torchvision puts in the file name and checks)
IMAGENET_WEIGHTS: dict[int, tuple[str, str]] = {
    18: (
        "https://download.pytorch.org/models/resnet18-f37072fd.pth",
        "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
    ),
    50: (
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a",
    ),
}


class ResNetTrunk(nn.Module):
    """A 2D MONAI ResNet without its classification layer.

    Downsampling convolutions have no bias, as in torchvision, so that torchvision-format ImageNet
    weights load one to one (see :func:`torchvision_to_monai_resnet`).

    Args:
        depth: one of 10, 18, 34, 50, 101, 152, 200.
        in_channels: image channels (1 for grayscale, 3 for RGB).
        stem_kernel: kernel size of the first convolution (7 in torchvision's ResNet).
        stem_stride: stride of the first convolution (2 in torchvision's ResNet; MONAI's default is 1,
            five times slower at 224 px).
        stem_max_pool: whether the max-pool after the stem is kept (torchvision keeps it; small
            images such as 28 px lose too much resolution with it).
    """

    def __init__(
        self,
        depth: int = 18,
        in_channels: int = 3,
        stem_kernel: int = 7,
        stem_stride: int = 2,
        stem_max_pool: bool = True,
    ) -> None:
        super().__init__()
        self.depth = depth
        name = f"resnet{depth}"
        if name not in resnet_params:
            raise ValueError(f"ResNet depth {depth} is not one of {sorted(int(k[6:]) for k in resnet_params)}")
        block, layers = resnet_params[name][:2]
        self.resnet = ResNet(
            block=block,
            layers=layers,
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=2,
            n_input_channels=in_channels,
            conv1_t_size=stem_kernel,
            conv1_t_stride=stem_stride,
            no_max_pool=not stem_max_pool,
            shortcut_type="B",
            feed_forward=False,
            bias_downsample=False,
        )
        self.out_channels = 512 * self.resnet.layer1[0].expansion

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Returns the last feature map, shape (B, out_channels, H', W')."""
        r = self.resnet
        x = r.act(r.bn1(r.conv1(x)))
        if not r.no_max_pool:
            x = r.maxpool(x)
        return r.layer4(r.layer3(r.layer2(r.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns globally average-pooled features, shape (B, out_channels)."""
        return self.feature_map(x).mean(dim=(2, 3))


def torchvision_to_monai_resnet(state_dict: dict[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """Maps a torchvision ``resnetXX`` state dict onto :class:`ResNetTrunk` keys.

    The mapping: every key gets the ``resnet.`` prefix (parameter names are otherwise the same:
    ``conv1``, ``bn1``, ``layerN.M.{conv,bn}K``, ``layerN.M.downsample.{0,1}``); ``fc.*`` is dropped
    (the trunk has no classifier); for ``in_channels == 1`` the RGB filters of ``conv1`` are summed,
    which gives the same response to a grey image replicated on three channels.
    """
    mapped = {}
    for key, value in state_dict.items():
        if key.startswith("fc."):
            continue
        if key == "conv1.weight" and value.shape[1] != in_channels:
            if in_channels != 1:
                raise ValueError(f"conv1.weight has {value.shape[1]} input channels; cannot map to {in_channels}")
            value = value.sum(dim=1, keepdim=True)
        mapped[f"resnet.{key}"] = value
    return mapped


def load_backbone_weights(trunk: ResNetTrunk, path: str, key_format: str = "monai") -> ResNetTrunk:
    """Initialises ``trunk`` from a local state-dict file.

    Args:
        trunk: the trunk to initialise.
        path: a ``.pt``/``.pth`` file holding a state dict (tensors only; read with ``weights_only=True``).
        key_format: ``"monai"`` for a :class:`ResNetTrunk` state dict, ``"torchvision"`` for torchvision's
            ``resnetXX`` ImageNet weights.

    Returns:
        the same trunk, for use inside configs.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f"cannot read backbone weights from {path}: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if key_format == "torchvision":
        state = torchvision_to_monai_resnet(state, trunk.resnet.conv1.in_channels)
    elif key_format != "monai":
        raise ValueError(f"key_format must be 'monai' or 'torchvision', got {key_format!r}")
    own = trunk.state_dict()
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if shapes:  # another depth, or a stem other than torchvision's 7x7
        raise ValueError(
            f"{path} does not match the trunk (ResNet-{trunk.depth}): {len(shapes)} tensors differ in shape "
            f"(file vs trunk), e.g. {shapes[:3]}"
        )
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the trunk: missing keys {missing}, unexpected keys {unexpected}")
    return trunk


def fetch_imagenet_weights(url: str, sha256: str, cache_dir: str) -> str:
    """The path of ``url``'s file in ``cache_dir``, downloaded there if missing; its SHA-256 is checked either way.

    A download goes to a temporary file first and is moved in place only when its hash matches, so a failed or
    wrong download leaves nothing in the cache. Any failure raises a :class:`RuntimeError` naming the URL, the
    expected path and hash, and how to place the file by hand (for machines without internet).
    """
    path = os.path.join(cache_dir, os.path.basename(url))
    by_hand = (
        f"To place it by hand, on a machine with internet: curl -L -o {os.path.basename(url)} {url} (or wget {url}), "
        f"check `sha256sum {os.path.basename(url)}` prints {sha256}, and copy the file to {path} "
        "(or set --pretrained_cache to its folder; --dcg_pretrained null trains the DCG from scratch)."
    )
    existed = os.path.isfile(path)
    try:
        download_url(url, path, hash_val=sha256, hash_type="sha256", progress=False)
    except HashCheckError:
        what = f"the existing file {path} has" if existed else f"the file downloaded from {url} has"
        raise RuntimeError(
            f"ImageNet weights: {what} the wrong SHA-256 (expected {sha256})"
            + (": delete or replace it. " if existed else "; nothing was kept. ")
            + by_hand
        ) from None  # the message says it all, and the bundle's error summary prints the last cause
    except Exception as e:  # noqa: BLE001 - offline, refused, unwritable: re-raised with what to do
        raise RuntimeError(
            f"ImageNet weights: cannot download {url} to {path} (expected SHA-256 {sha256}): "
            f"{type(e).__name__}: {e}. {by_hand}"
        ) from None
    if not os.path.isfile(path):  # download_url swallows PermissionError (a Windows workaround)
        raise RuntimeError(f"ImageNet weights: {url} could not be written to {path}. {by_hand}")
    return path


def fetch_pretrained(pretrained: str | None, depths: list[int], cache_dir: str) -> dict[int, str]:
    """The local files of the ``pretrained`` weights for each trunk depth, fetched into ``cache_dir`` if missing.

    Args:
        pretrained: ``imagenet`` (torchvision's IMAGENET1K_V1 ResNets), or None for none.
        depths: the depths of the trunks to initialise.
        cache_dir: where the files are kept (torch.hub's ``checkpoints`` folder by default: a torchvision
            download already there is reused).

    Returns:
        ``{depth: path}``; empty for ``pretrained=None``.
    """
    if pretrained is None:
        return {}
    if pretrained != "imagenet":
        raise ValueError(f"pretrained weights must be 'imagenet' or None, got {pretrained!r}")
    unknown = sorted({d for d in depths if d not in IMAGENET_WEIGHTS})
    if unknown:
        raise ValueError(
            f"ImageNet weights exist here for ResNet depths {sorted(IMAGENET_WEIGHTS)}, not {unknown}; "
            "set global_depth/local_depth to one of them, give a local file (--dcg_weights), or --dcg_pretrained null"
        )
    return {d: fetch_imagenet_weights(*IMAGENET_WEIGHTS[d], cache_dir) for d in sorted(set(depths))}


def load_pretrained(
    network: nn.Module,
    encoder_weights: str | None,
    dcg_weights: str | None,
    key_format: str = "torchvision",
    dcg_files: dict[int, str] | None = None,
) -> nn.Module:
    """Initialises DiffMIC's trunks from local state-dict files (None leaves a trunk as it is).

    Args:
        network: a :class:`~scripts.network.DiffMIC`.
        encoder_weights: weights of the encoder trunk rho(x).
        dcg_weights: weights of both DCG trunks (global and, if present, local); wins over ``dcg_files``.
        key_format: ``torchvision`` or ``monai``, the format of ``encoder_weights`` and ``dcg_weights``.
        dcg_files: torchvision-format files by trunk depth (:func:`fetch_pretrained`) for the DCG trunks.

    Returns:
        the same network, for use inside configs.
    """
    if encoder_weights and network.use_diffusion:
        load_backbone_weights(network.head.encoder.trunk, encoder_weights, key_format)
        if network.ema is not None:  # the EMA starts from the initial weights
            network.ema.module.load_state_dict(network.head.state_dict())
    trunks = [network.dcg.global_trunk] + ([network.dcg.local_trunk] if network.dcg.use_local_stream else [])
    for trunk in trunks:
        if dcg_weights:
            load_backbone_weights(trunk, dcg_weights, key_format)
        elif dcg_files:
            depth = trunk.depth
            if depth not in dcg_files:
                raise ValueError(
                    f"no pretrained file for the DCG's ResNet-{depth} trunk (files for {sorted(dcg_files)})"
                )
            load_backbone_weights(trunk, dcg_files[depth], "torchvision")
    return network
