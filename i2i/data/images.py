"""Decoding image files into uint8 RGB arrays, explicitly for every pixel format.

PIL's ``convert("RGB")`` is right for 8-bit formats but silently wrong for some
others: it clips 16-bit gray to white and throws away alpha, showing whatever
colour transparent pixels happen to store. Those cases are handled here; what
cannot be converted without guessing is refused with the file's name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from i2i.data.base import DataError

# A truncated file must fail loudly, never decode as a grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

SIXTEEN_BIT_GRAY = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
WITH_ALPHA = {"RGBA", "LA", "La", "RGBa", "PA"}


def read_rgb(path: str | Path) -> np.ndarray:
    """An HxWx3 uint8 array. Gray is replicated, 16-bit gray is scaled by 1/257,
    alpha is composited over white, CMYK and palettes are converted."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, path)
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DataError(f"{path}: cannot decode image ({error}); the file is corrupt, truncated or not an image") from None


def to_rgb(image: Image.Image, path: str | Path) -> np.ndarray:
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image)
    if mode in SIXTEEN_BIT_GRAY:
        values = np.asarray(image).astype(np.float64)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode == "F":
        raise DataError(f"{path}: 32-bit float image (mode F) has no defined range; save it as 8- or 16-bit")
    if mode == "P" and "transparency" in image.info or mode in WITH_ALPHA:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.asarray(image.convert("RGB"))
