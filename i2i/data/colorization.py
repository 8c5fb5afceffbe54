"""``colorization``: any folder of colour photos; input = luma (1 channel), target = the photo."""

from __future__ import annotations

import numpy as np
from PIL import Image

from i2i.data.photos import PhotoFolderDataset, PhotoParams
from i2i.recipe import DataSection
from i2i.registry import DATASETS


class ColorizationParams(PhotoParams):
    pass


@DATASETS.register("colorization", params=ColorizationParams)
class ColorizationDataset(PhotoFolderDataset):
    def __init__(self, params: ColorizationParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(params, data, split, train, seed)
        self.set_channels(1, 3)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        color = self.photo(index)
        gray = np.asarray(Image.fromarray(color).convert("L"))[..., None]  # ITU-R 601 luma
        return self.orient(gray, color)
