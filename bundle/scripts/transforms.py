"""Image transforms that MONAI does not have."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

from monai.config import KeysCollection
from monai.transforms import CenterSpatialCrop, MapTransform

__all__ = ["CenterSquareCropd"]


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
