"""DiffAugment (Zhao et al., NeurIPS 2020): differentiable augmentations of what the
discriminator sees, real and generated alike, so a discriminator on little data cannot
memorise the training images; the generator learns through them.

Each call draws one transform per sample from torch's RNG (a checkpoint saves it, so a
resumed run draws the same) and applies it alike to every tensor it is given: the step
passes one batch of (condition, image) pairs per call, so a pair's condition and image move
together, while the real and the generated batch get their own draws, as in the paper. All
on the device, with no host sync: a captured CUDA graph replays fresh draws.

- ``color``: brightness + U(-0.5, 0.5), saturation x U(0, 2), contrast x U(0.5, 1.5), on
  the image channels only: the condition is the same real input in the real and the
  generated pair, and a colour shift of it would make a pair inconsistent without making
  the two harder to tell apart.
- ``translation``: by up to 1/8 of each side, whole pixels, zero padding.
- ``cutout``: a square of half the side set to zero, at a uniform random centre (it may
  overhang the border).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Augmentation = Literal["color", "translation", "cutout"]


def diff_augment(pairs: list[torch.Tensor], policy: list[Augmentation], image_channels: int) -> list[torch.Tensor]:
    """``policy``'s augmentations in order, each drawn once per sample and applied alike to
    every tensor of ``pairs`` (each N x C x H x W, the same N, H and W; the last
    ``image_channels`` channels are the image)."""
    for name in policy:
        pairs = AUGMENTATIONS[name](pairs, image_channels)
    return pairs


def _uniform(pairs: list[torch.Tensor], low: float, high: float) -> torch.Tensor:
    x = pairs[0]
    return torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * (high - low) + low


def color(pairs: list[torch.Tensor], image_channels: int) -> list[torch.Tensor]:
    brightness, saturation, contrast = _uniform(pairs, -0.5, 0.5), _uniform(pairs, 0, 2), _uniform(pairs, 0.5, 1.5)

    def apply(pair: torch.Tensor) -> torch.Tensor:
        condition, image = pair[:, :-image_channels], pair[:, -image_channels:] + brightness
        grey = image.mean(1, keepdim=True)
        image = (image - grey) * saturation + grey
        mean = image.mean((1, 2, 3), keepdim=True)
        return torch.cat([condition, (image - mean) * contrast + mean], 1)

    return [apply(pair) for pair in pairs]


def _shifted_indices(length: int, limit: int, n: int, device: torch.device) -> torch.Tensor:
    """N x length indices into an axis zero-padded by ``limit`` on each side: position i of
    sample k reads i - shift_k, shift_k uniform in [-limit, limit]."""
    shift = torch.randint(-limit, limit + 1, (n, 1), device=device)
    return torch.arange(length, device=device) + limit - shift


def translation(pairs: list[torch.Tensor], image_channels: int) -> list[torch.Tensor]:
    n, _, height, width = pairs[0].shape
    dy, dx = int(height / 8 + 0.5), int(width / 8 + 0.5)
    rows = _shifted_indices(height, dy, n, pairs[0].device)
    cols = _shifted_indices(width, dx, n, pairs[0].device)

    def apply(pair: torch.Tensor) -> torch.Tensor:
        padded = F.pad(pair, (dx, dx, dy, dy))
        c = pair.shape[1]
        picked = padded.gather(2, rows[:, None, :, None].expand(n, c, height, width + 2 * dx))
        return picked.gather(3, cols[:, None, None, :].expand(n, c, height, width))

    return [apply(pair) for pair in pairs]


def _outside(length: int, size: int, n: int, device: torch.device) -> torch.Tensor:
    """N x length: True outside a run of ``size`` positions centred uniformly on the axis."""
    start = torch.randint(0, length, (n, 1), device=device) - size // 2
    position = torch.arange(length, device=device)
    return (position < start) | (position >= start + size)


def cutout(pairs: list[torch.Tensor], image_channels: int) -> list[torch.Tensor]:
    n, _, height, width = pairs[0].shape
    device = pairs[0].device
    rows = _outside(height, int(height / 2 + 0.5), n, device)
    cols = _outside(width, int(width / 2 + 0.5), n, device)
    keep = (rows[:, :, None] | cols[:, None, :]).unsqueeze(1)
    return [pair * keep.to(pair.dtype) for pair in pairs]


AUGMENTATIONS = {"color": color, "translation": translation, "cutout": cutout}
