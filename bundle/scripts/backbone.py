"""ResNet trunks built on MONAI's ResNet, and loading of local state-dict files into them."""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNet, resnet_params
from torch import nn

__all__ = ["ResNetTrunk", "load_backbone_weights", "load_pretrained", "torchvision_to_monai_resnet"]


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
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the trunk: missing keys {missing}, unexpected keys {unexpected}")
    return trunk


def load_pretrained(
    network: nn.Module, encoder_weights: str | None, dcg_weights: str | None, key_format: str = "torchvision"
) -> nn.Module:
    """Initialises DiffMIC's trunks from local state-dict files (None leaves a trunk as it is).

    Args:
        network: a :class:`~scripts.network.DiffMIC`.
        encoder_weights: weights of the encoder trunk rho(x).
        dcg_weights: weights of both DCG trunks (global and, if present, local).
        key_format: ``torchvision`` or ``monai``.

    Returns:
        the same network, for use inside configs.
    """
    if encoder_weights and network.use_diffusion:
        load_backbone_weights(network.head.encoder.trunk, encoder_weights, key_format)
        if network.ema is not None:  # the EMA starts from the initial weights
            network.ema.module.load_state_dict(network.head.state_dict())
    if dcg_weights:
        load_backbone_weights(network.dcg.global_trunk, dcg_weights, key_format)
        if network.dcg.use_local_stream:
            load_backbone_weights(network.dcg.local_trunk, dcg_weights, key_format)
    return network
