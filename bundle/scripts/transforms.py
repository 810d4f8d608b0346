"""Image transforms that MONAI does not have."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import CenterSpatialCrop, MapTransform
from monai.utils import convert_to_dst_type

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "AntialiasResized",
    "CenterSquareCropd",
    "Ensure2Dd",
    "ImageNetNormalized",
    "MatchChannelsd",
    "ScaleBitDepthd",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet statistics of RGB intensities in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)


class CenterSquareCropd(MapTransform):
    """Crops the largest centred square from channel-first 2D images (HAM10000 is 4:3)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            side = min(d[key].shape[1:])
            d[key] = CenterSpatialCrop(roi_size=(side, side))(d[key])
        return d


class MatchChannelsd(MapTransform):
    """Converts channel-first 2D images to the network's channel count.

    An alpha channel (2 or 4 channels) is dropped; grayscale is repeated to RGB; RGB becomes grayscale by
    ITU-R BT.601 luma (0.299 R + 0.587 G + 0.114 B). Other combinations raise an error naming the shape.

    Args:
        keys: keys of the images.
        channels: the channel count the network expects (1 or 3).
    """

    def __init__(self, keys: KeysCollection, channels: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            if image.shape[0] in (2, 4):
                image = image[:-1]  # drop alpha
            if image.shape[0] == self.channels:
                pass
            elif image.shape[0] == 1 and self.channels == 3:
                image = image.repeat(3, *([1] * (image.ndim - 1)))
            elif image.shape[0] == 3 and self.channels == 1:
                luma = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32).view(3, *([1] * (image.ndim - 1)))
                image = (torch.as_tensor(image, dtype=torch.float32) * luma).sum(dim=0, keepdim=True)
            else:
                shape = tuple(d[key].shape)
                raise ValueError(f"cannot convert an image of shape {shape} to {self.channels} channel(s)")
            d[key] = image
        return d


class Ensure2Dd(MapTransform):
    """Makes channel-first images 2D: a singleton spatial axis (a DICOM or NIfTI slice read as a volume of
    depth 1) is removed; any other 3D volume raises an error naming its shape."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            while image.ndim > 3 and 1 in image.shape[1:]:
                image = image.squeeze(list(image.shape[1:]).index(1) + 1)
            if image.ndim != 3:
                raise ValueError(f"expected a 2D image (channel, rows, columns), got shape {tuple(d[key].shape)}")
            d[key] = image
        return d


class ScaleBitDepthd(MapTransform):
    """Maps integer intensities of any bit depth to [``low``, ``high``] (the network's [-1, 1]).

    The full range comes from the array's dtype for 8- and 16-bit unsigned integers (255, 65535). Other
    dtypes (PIL reads some 16-bit PNGs as 32-bit integers; readers may return floats) take 255 when the
    maximum is at most 255, else 65535 when at most 65535; larger values are an error naming the maximum.

    Args:
        keys: keys of the images.
        low: the value of intensity 0.
        high: the value of the largest intensity of the bit depth.
    """

    def __init__(self, keys: KeysCollection, low: float = -1.0, high: float = 1.0, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.low, self.high = low, high

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            dtype = str(image.dtype).rsplit(".", 1)[-1]
            if dtype == "uint8":
                full = 255.0
            elif dtype == "uint16":
                full = 65535.0
            else:
                peak = float(image.max())
                if peak > 65535:
                    raise ValueError(f"intensities up to {peak:g} ({dtype}): expected 8- or 16-bit images")
                full = 255.0 if peak <= 255 else 65535.0
            # one float copy, then in place: a full-size photograph is 70 MB in float32 (4x faster than
            # out-of-place steps, same values); a MetaTensor keeps its metadata
            pixels = torch.as_tensor(image.as_tensor() if isinstance(image, MetaTensor) else image)
            scaled = pixels.to(torch.float32, copy=True).div_(full)
            if dtype not in ("uint8", "uint16"):
                scaled.clamp_(0, 1)
            scaled.mul_(self.high - self.low).add_(self.low)
            d[key] = MetaTensor(scaled, meta=image.meta) if isinstance(image, MetaTensor) else scaled
        return d


class AntialiasResized(MapTransform):
    """Resizes channel-first 2D images with torch's antialiased bilinear interpolation.

    The same result as MONAI's ``Resized(mode="bilinear", anti_aliasing=True)`` within a small tolerance
    (``tests/test_preprocessing.py``), about 40 times faster on full-size images: MONAI smooths with a
    Gaussian before interpolating, which costs seconds on a 3000x2000 photograph; torch folds the
    antialiasing into the interpolation. Upsampling is plain bilinear in both. The output is float32.

    Args:
        keys: keys of the images.
        spatial_size: (rows, columns) of the output.
    """

    def __init__(self, keys: KeysCollection, spatial_size, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        if len(self.spatial_size) != 2:
            raise ValueError(f"spatial_size must be (rows, columns), got {spatial_size}")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            pixels = torch.as_tensor(image.as_tensor() if hasattr(image, "as_tensor") else image, dtype=torch.float32)
            if tuple(pixels.shape[1:]) != self.spatial_size:
                pixels = F.interpolate(
                    pixels[None], size=self.spatial_size, mode="bilinear", align_corners=False, antialias=True
                )[0]
            d[key] = convert_to_dst_type(pixels, image, dtype=torch.float32)[0]
        return d


class ImageNetNormalized(MapTransform):
    """Maps images in [``low``, ``high``] (ScaleBitDepthd's output) to the input of torchvision's pretrained
    networks: ``(v - mean) / std`` per channel, where ``v = (x - low) / (high - low)`` is the intensity in
    [0, 1] (``pixel / 255`` for 8-bit images). A 1-channel image takes the mean of the three means and stds
    (the pretrained ``conv1`` then has its RGB filters summed: the response to a grey image on 3 channels).

    Args:
        keys: keys of the images.
        mean: per-channel means of [0, 1] intensities (ImageNet's by default).
        std: per-channel standard deviations (ImageNet's by default).
        low: the value of intensity 0 in the input.
        high: the value of the largest intensity in the input.
    """

    def __init__(
        self,
        keys: KeysCollection,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        low: float = -1.0,
        high: float = 1.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mean = torch.tensor(mean, dtype=torch.float32)
        self.std = torch.tensor(std, dtype=torch.float32)
        self.low, self.high = float(low), float(high)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            channels = image.shape[0]
            mean, std = self.mean, self.std
            if channels == 1 and len(mean) != 1:
                mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
            elif channels != len(mean):
                raise ValueError(f"{len(mean)} channel means for an image of shape {tuple(image.shape)}")
            shape = (channels,) + (1,) * (image.ndim - 1)
            pixels = torch.as_tensor(image, dtype=torch.float32)
            d[key] = ((pixels - self.low) / (self.high - self.low) - mean.view(shape)) / std.view(shape)
        return d
