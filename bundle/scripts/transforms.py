"""Image transforms that MONAI does not have."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import CenterSpatialCrop, MapTransform

__all__ = ["CenterSquareCropd", "Ensure2Dd", "MatchChannelsd", "ScaleBitDepthd"]


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
            image = (
                torch.as_tensor(image, dtype=torch.float32) if not isinstance(image, torch.Tensor) else image.float()
            )
            d[key] = (image / full).clamp(0, 1) * (self.high - self.low) + self.low
        return d
