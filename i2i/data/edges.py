"""``edges``: any folder of photos; input = Canny edge map (1 channel), target = the photo.

Edges are found on the photo at the training resolution (after the resize to
``load_size``), so line width does not depend on the file's size. By default
lines are black on white, as in the pix2pix edges2shoes set. With the
decode-once cache they are computed once per image, otherwise on the fly.
"""

from __future__ import annotations

import cv2
import numpy as np
from pydantic import Field, model_validator

from i2i.data.base import resize
from i2i.data.photos import PhotoFolderDataset, PhotoParams
from i2i.recipe import DataSection
from i2i.registry import DATASETS


class EdgesParams(PhotoParams):
    low: int = Field(100, ge=0, le=1000, description="Canny hysteresis: weaker gradients are never edges")
    high: int = Field(200, ge=0, le=1000, description="Canny hysteresis: stronger gradients are always edges")
    blur_sigma: float = Field(1.0, ge=0, description="Gaussian smoothing before Canny (0: none)")
    invert: bool = Field(True, description="black lines on white (as edges2shoes)")

    @model_validator(mode="after")
    def _ordered(self) -> EdgesParams:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


def canny(photo: np.ndarray, params: EdgesParams) -> np.ndarray:
    """HxWx3 uint8 photo -> HxWx1 uint8 edge map."""
    gray = cv2.cvtColor(np.ascontiguousarray(photo), cv2.COLOR_RGB2GRAY)
    if params.blur_sigma > 0:
        gray = cv2.GaussianBlur(gray, (0, 0), params.blur_sigma)
    edges = cv2.Canny(gray, params.low, params.high)
    return (255 - edges if params.invert else edges)[..., None]


@DATASETS.register("edges", params=EdgesParams)
class EdgesDataset(PhotoFolderDataset):
    def __init__(self, params: EdgesParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(params, data, split, train, seed)
        self.set_channels(1, 3)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        photo = resize(self.photo(index), self.size)
        return self.orient(canny(photo, self.params), photo)
