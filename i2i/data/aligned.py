"""``aligned``: a folder of side-by-side A|B images, as in the pix2pix datasets.

For maps: left half = aerial photo (A), right half = map (B). ``direction``
BtoA makes B the input and A the target.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from i2i.contracts import Params
from i2i.data.base import DataError, FileDataset, list_images
from i2i.data.images import read_rgb
from i2i.recipe import DataSection
from i2i.registry import DATASETS

__all__ = ["AlignedDataset", "read_rgb", "split_halves"]


def split_halves(ab: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The A (left) and B (right) halves of a 2:1 side-by-side image."""
    height, width = ab.shape[:2]
    if width != 2 * height:
        raise DataError(
            f"{path}: {width}x{height} is not 2:1; an aligned image is two square halves side by side (A|B)"
        )
    return ab[:, :height], ab[:, height:]


@DATASETS.register("aligned", params=Params)
class AlignedDataset(FileDataset):
    def __init__(self, params: Params, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(data, split, train, seed)
        self.files = list_images(data.root / split)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        path = self.files[index]
        return self.orient(*split_halves(read_rgb(path), path))
