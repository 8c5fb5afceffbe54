"""``degrade``: super-resolution as a paired task. Any folder of photos; target =
the photo crop, input = the same crop degraded on the fly.

The degradation runs after the crop, in this order: optional Gaussian blur,
bicubic downscale by ``scale`` (antialiased, as MATLAB's imresize), optional
Gaussian noise and JPEG compression at the low resolution, then a bicubic
upscale back to the crop size so the U-Net sees input and target at one size.
Its randomness (the noise) is seeded per sample like the crop.
"""

from __future__ import annotations

from typing import Literal

import albumentations as A
import cv2
import numpy as np
from PIL import Image
from pydantic import Field

from i2i.data.base import DataError
from i2i.data.photos import PhotoFolderDataset, PhotoParams
from i2i.recipe import DataSection
from i2i.registry import DATASETS


class DegradeParams(PhotoParams):
    scale: Literal[2, 4, 8] = Field(4, description="downscale factor")
    blur_sigma: float = Field(0.0, ge=0, description="Gaussian blur before downscaling (0: none)")
    noise_std: float = Field(0.0, ge=0, le=255, description="Gaussian noise std in 8-bit levels at low resolution (0: none)")
    jpeg_quality: int | None = Field(None, ge=1, le=100, description="JPEG-compress the low-resolution image (null: no)")


def bicubic(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


@DATASETS.register("degrade", params=DegradeParams)
class DegradeDataset(PhotoFolderDataset):
    def __init__(self, params: DegradeParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(params, data, split, train, seed)
        if data.crop_size % params.scale:
            raise DataError(f"data.crop_size {data.crop_size} is not a multiple of data.dataset.params.scale {params.scale}")
        if data.direction != "AtoB":
            raise DataError("the degrade dataset's input is the degraded photo: data.direction must be AtoB")
        low_res = []
        if params.noise_std > 0:
            std = params.noise_std / 255.0
            low_res.append(A.GaussNoise(std_range=(std, std), p=1.0))
        if params.jpeg_quality is not None:
            low_res.append(A.ImageCompression(quality_range=(params.jpeg_quality, params.jpeg_quality), p=1.0))
        self.low_res = A.Compose(low_res, seed=seed)

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        photo = self.photo(index)
        return photo, photo

    def degrade(self, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        size = photo.shape[0]
        if self.params.blur_sigma > 0:
            photo = cv2.GaussianBlur(np.ascontiguousarray(photo), (0, 0), self.params.blur_sigma)
        small = bicubic(np.ascontiguousarray(photo), size // self.params.scale)
        self.low_res.set_random_seed(int(rng.integers(2**31)))
        return bicubic(self.low_res(image=small)["image"], size)

    def finish(self, source: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self.degrade(target, rng), target
