"""Image readers for MONAI's LoadImage: intensities as stored, in every file format inference accepts."""

from __future__ import annotations

import numpy as np
from monai.data import ITKReader, PILReader

__all__ = ["standard_pil_mode", "ITKCopyReader", "ReducedDecode", "WritablePILReader"]


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


class ReducedDecode:
    """A ``PILReader(converter=...)`` that decodes large JPEGs at 1/2, 1/4 or 1/8 scale, then applies
    :func:`standard_pil_mode`.

    libjpeg scales in the DCT domain while decoding (PIL's ``draft``), several times faster than decoding all
    pixels of a 3000x2000 photograph; the scale is the smallest that keeps both sides at least ``min_side``,
    and the antialiased resize to the network's size follows. Other formats, and JPEGs already near
    ``min_side``, are decoded in full.

    Args:
        min_side: the shortest side the decoded image may have (None: always decode in full). Four times the
            network's input size (the configs' default) keeps the result within the tolerance of a full decode
            (``tests/test_preprocessing.py``).
    """

    def __init__(self, min_side: int | None) -> None:
        self.min_side = None if min_side is None else int(min_side)

    def __call__(self, image):
        if self.min_side and image.format == "JPEG":
            image.draft(image.mode, (self.min_side, self.min_side))  # before PIL reads any pixel
        return standard_pil_mode(image)


class ITKCopyReader(ITKReader):
    """MONAI's ITKReader returning a copy of the pixels.

    MONAI 1.6.1's ITKReader returns a view of the ITK image's buffer; with ``LoadImage(dtype=None)`` (which
    keeps 8- and 16-bit integers) nothing copies it before the ITK image is freed, and the pixels read
    back are garbage. The copy is made while the image is alive.
    """

    def _get_array_data(self, img):
        return np.array(super()._get_array_data(img), copy=True)


class WritablePILReader(PILReader):
    """MONAI's PILReader returning writable pixels.

    numpy's view of a decoded PIL image is read-only; torch warns when it wraps one ("The given NumPy array is
    not writable") and in-place transforms on it would be undefined. The copy costs little beside the decode.
    """

    def get_data(self, img):
        data, meta = super().get_data(img)
        return (data if data.flags.writeable else data.copy()), meta
