"""Turning tensors in [-1, 1] into pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from i2i.safe_files import replacing


def quantize(images: torch.Tensor) -> torch.Tensor:
    """NCHW in [-1, 1] -> uint8 NCHW on the same device, rounded half to even as when saving an image."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """NCHW in [-1, 1] -> NHWC uint8 numpy with 3 channels (gray is repeated), the layout PIL saves."""
    images = quantize(images).cpu()
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return images.permute(0, 2, 3, 1).numpy()


GRID_GAP = 2  # white pixels between the tiles of a grid


def tile_grid(columns: list[np.ndarray], gap: int = GRID_GAP) -> np.ndarray:
    """Columns of NHWC uint8 tiles, all the same size -> one HWC uint8 image, one row per tile index."""
    n, h, w, _ = columns[0].shape
    grid = np.full((n * h + (n - 1) * gap, len(columns) * w + (len(columns) - 1) * gap, 3), 255, np.uint8)
    for col, array in enumerate(columns):
        for row in range(n):
            grid[row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w] = array[row]
    return grid


def save_grid(columns: list[torch.Tensor], path: Path, gap: int = GRID_GAP) -> Path:
    """One row per image; each column a tensor of the same batch (e.g. input | generated | target)."""
    grid = tile_grid([to_uint8(c) for c in columns], gap)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as handle:
        Image.fromarray(grid).save(handle, format="PNG")
    return path
