"""``synthetic``: deterministic paired shapes, no files needed (tests and demos).

The input is a flat-colour label map of random rectangles and discs; the
target renders the same layout as a "photo" (shaded colours and texture), so
the mapping is learnable and the same index always gives the same pair.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from i2i.contracts import Params
from i2i.data.base import ImagePairDataset
from i2i.recipe import DataSection
from i2i.registry import DATASETS

PALETTE = np.array([[230, 60, 60], [60, 200, 80], [60, 90, 230], [240, 220, 60], [200, 80, 220]], np.uint8)


class SyntheticParams(Params):
    length: int = Field(16, ge=1, description="pairs per split")
    size: int = Field(64, ge=8, description="side of the generated square images")
    shapes: int = Field(4, ge=1)
    in_channels: Literal[1, 3] = Field(3, description="1 gives a gray label map (A side)")
    out_channels: Literal[1, 3] = Field(3, description="1 gives a gray photo (B side)")


@DATASETS.register("synthetic", params=SyntheticParams, example={"length": 4, "size": 40})
class SyntheticDataset(ImagePairDataset):
    def __init__(self, params: SyntheticParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(data, split, train, seed)
        self.params = params
        self.in_channels, self.out_channels = params.in_channels, params.out_channels
        if data.direction == "BtoA":
            self.in_channels, self.out_channels = self.out_channels, self.in_channels
        self.split_offset = 0 if split == "train" else 1_000_003

    def __len__(self) -> int:
        return self.params.length

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        rng = np.random.default_rng(index + self.split_offset)
        yy, xx = np.mgrid[0 : p.size, 0 : p.size]
        labels = np.zeros((p.size, p.size, 3), np.uint8) + 20
        photo = np.zeros((p.size, p.size, 3), np.float32) + 30 + 10 * np.sin(xx / 3.0)[..., None]
        for _ in range(p.shapes):
            colour = PALETTE[rng.integers(len(PALETTE))]
            cx, cy, r = rng.integers(0, p.size, 2).tolist() + [int(rng.integers(p.size // 8, p.size // 3))]
            mask = (np.abs(xx - cx) < r) & (np.abs(yy - cy) < r) if rng.random() < 0.5 else (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            labels[mask] = colour
            shade = 0.6 + 0.4 * (yy[mask] - cy + r) / (2 * r)
            photo[mask] = colour[None, :] * shade[:, None]
        photo = np.clip(photo, 0, 255).astype(np.uint8)
        source = labels if p.in_channels == 3 else labels.mean(-1, keepdims=True).astype(np.uint8)
        target = photo if p.out_channels == 3 else photo.mean(-1, keepdims=True).astype(np.uint8)
        if self.data.direction == "BtoA":
            source, target = target, source
        return source, target
