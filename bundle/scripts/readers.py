"""Image readers for MONAI's LoadImage: intensities as stored, in every file format inference accepts."""

from __future__ import annotations

import numpy as np
from monai.data import ITKReader

__all__ = ["standard_pil_mode", "ITKCopyReader"]


def standard_pil_mode(image):
    """A PIL image in a mode whose pixels are intensities: palette images become RGB(A), bilevel becomes 8-bit
    grayscale, CMYK and other colour spaces become RGB; 8- and 16-bit grayscale, RGB and RGBA are kept.
    (For ``PILReader(converter=...)``.)"""
    if image.mode in ("P", "PA"):
        return image.convert("RGBA" if "transparency" in image.info or image.mode == "PA" else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    return image


class ITKCopyReader(ITKReader):
    """MONAI's ITKReader returning a copy of the pixels.

    MONAI 1.6.1's ITKReader returns a view of the ITK image's buffer; with ``LoadImage(dtype=None)`` (which
    keeps 8- and 16-bit integers) nothing copies it before the ITK image is freed, and the pixels read
    back are garbage. The copy is made while the image is alive.
    """

    def _get_array_data(self, img):
        return np.array(super()._get_array_data(img), copy=True)
