"""Datasets made from one folder of photos (``root/<split>/``), the pair derived from each photo.

``side`` reads the left or right half of side-by-side A|B files, so the aerial
halves of the maps set serve as a photo folder without being split on disk.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from i2i.contracts import Params
from i2i.data.aligned import split_halves
from i2i.data.base import FileDataset, list_images
from i2i.data.images import read_rgb
from i2i.recipe import DataSection


class PhotoParams(Params):
    side: Literal["full", "left", "right"] = Field("full", description="left/right: the A or B half of A|B files")


class PhotoFolderDataset(FileDataset):
    def __init__(self, params: PhotoParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(data, split, train, seed)
        self.params = params
        self.files = list_images(data.root / split)

    def photo(self, index: int) -> np.ndarray:
        path = self.files[index]
        image = read_rgb(path)
        if self.params.side == "full":
            return image
        left, right = split_halves(image, path)
        return left if self.params.side == "left" else right
