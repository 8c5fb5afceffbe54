"""Inference on image files of any size.

The generators are fully convolutional, so an image of any size goes through in
one piece once it is padded to a multiple of the generator's total downsampling
(2**num_downs for the U-Net; 256 where a generator does not say, which every
power-of-two downsampling up to 256 divides). Images larger than ``tile`` are cut
into overlapping tiles whose outputs are blended with weights that fall off
towards the tile edges, so seams do not show and memory stays bounded. The
output always has the input's size.

``mode``: ``eval`` uses BatchNorm's running statistics and no dropout, so a
result depends on its image alone. ``train`` is what the pix2pix reference does
at test time: batch statistics and active dropout (a different result per run,
and in a batch or with tiles the statistics come from the whole batch of
images or tiles; use ``batch_size=1`` and no tiling to match the reference).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from i2i.data.aligned import read_rgb
from i2i.data.base import DataError, list_images
from i2i.engine.build import resolve_device
from i2i.engine.inference import generator_mode, load_generator
from i2i.visual import to_uint8

DEFAULT_MULTIPLE = 256  # for generators that do not declare `size_multiple`


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple (replicate where the image is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    if channels == 1 and image.shape[2] == 3:
        image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(127.5).sub(1).unsqueeze(0)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering [0, length) with windows of ``tile`` overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_window(tile: int, overlap: int) -> torch.Tensor:
    """1-D weights: a ramp over ``overlap`` pixels at both ends, 1 inside, never 0."""
    position = torch.arange(tile, dtype=torch.float32)
    distance = torch.minimum(position + 0.5, tile - position - 0.5)
    return (distance / max(overlap, 1)).clamp(max=1.0)


def run_tiled(
    generator: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    tile: int,
    overlap: int,
    batch_size: int,
) -> torch.Tensor:
    """``generator`` over overlapping ``tile`` x ``tile`` windows of ``x`` (N, C, H, W; H and W
    padded to a multiple of the generator's downsampling, as is ``tile``), blended."""
    n, _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    windows = [(top, left) for top in tile_starts(h, th, overlap) for left in tile_starts(w, tw, overlap)]
    weight = (blend_window(th, overlap)[:, None] * blend_window(tw, overlap)[None, :]).to(x.device)
    total, norm = None, torch.zeros(h, w, device=x.device)
    per_call = max(1, batch_size // n)
    for first in range(0, len(windows), per_call):
        chunk = windows[first : first + per_call]
        pieces = torch.cat([x[..., t : t + th, l : l + tw] for t, l in chunk])
        outputs = generator(pieces).float()
        if total is None:
            total = torch.zeros(n, outputs.shape[1], h, w, device=x.device)
        for i, (t, l) in enumerate(chunk):
            total[..., t : t + th, l : l + tw] += outputs[i * n : (i + 1) * n] * weight
            norm[t : t + th, l : l + tw] += weight
    return total / norm


def translate_batch(
    generator: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    multiple: int,
    tile: int,
    overlap: int,
    batch_size: int,
) -> torch.Tensor:
    """Images of one size in, translated images of that size out."""
    padded, (h, w) = pad_to_multiple(x, multiple)
    tile = max(multiple, tile - tile % multiple)
    if padded.shape[-2] <= tile and padded.shape[-1] <= tile:
        y = generator(padded).float()
    else:
        y = run_tiled(generator, padded, tile, overlap, batch_size)
    return y[..., :h, :w]


def input_side(image: np.ndarray, direction: str) -> np.ndarray:
    """The input half of an aligned A|B image: A for AtoB, B for BtoA."""
    if image.shape[1] % 2:
        raise DataError(f"width {image.shape[1]} is odd; an aligned image is two halves side by side (A|B)")
    half = image.shape[1] // 2
    return image[:, half:] if direction == "BtoA" else image[:, :half]


def batches(files: list[Path], load: Callable[[Path], torch.Tensor], size: int) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Consecutive files of the same image size, up to ``size`` at a time."""
    group: list[Path] = []
    tensors: list[torch.Tensor] = []
    for file in files:
        tensor = load(file)
        if group and (len(group) == size or tensor.shape != tensors[0].shape):
            yield group, torch.cat(tensors)
            group, tensors = [], []
        group.append(file)
        tensors.append(tensor)
    if group:
        yield group, torch.cat(tensors)


@torch.no_grad()
def translate_paths(
    checkpoint: Path,
    source: Path,
    output: Path,
    aligned: bool = False,
    mode: str = "eval",
    device: str = "auto",
    tile: int = 1024,
    overlap: int = 64,
    batch_size: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    backend: str = "torch",
) -> list[Path]:
    """Translate an image file or every image in a folder into ``output`` (PNG, same stem);
    ``on_progress(done, total)`` follows each written image."""
    if mode not in ("eval", "train"):
        raise DataError(f"--mode must be eval or train, got {mode!r}")
    if batch_size < 1 or tile < 1 or not 0 <= overlap < tile:
        raise DataError(f"need batch size >= 1, tile >= 1 and 0 <= overlap < tile (got {batch_size}, {tile}, {overlap})")
    torch_device = resolve_device(device)
    if backend == "onnxruntime":
        from i2i.export import onnxruntime_generator

        generator, recipe, metadata = onnxruntime_generator(checkpoint, mode)
    elif backend in ("torch", "fast", "compiled"):
        generator, recipe, metadata = load_generator(checkpoint, torch_device)
    else:
        raise DataError(f"--backend must be torch, fast, compiled or onnxruntime, got {backend!r}")
    in_channels = int(metadata["in_channels"])
    run = generator
    if backend in ("fast", "compiled"):
        from i2i.engine.fast_inference import fast_generator

        crop = recipe.data.crop_size
        example = torch.zeros(1, in_channels, crop, crop, device=torch_device)
        run = fast_generator(generator, mode, example, compile=backend == "compiled")
    multiple = int(metadata.get("size_multiple") or getattr(generator, "size_multiple", DEFAULT_MULTIPLE))
    if not source.exists():
        raise DataError(f"input not found: {source}")
    files = [source] if source.is_file() else list_images(source)
    output.mkdir(parents=True, exist_ok=True)

    def load(file: Path) -> torch.Tensor:
        image = read_rgb(file)
        if aligned:
            try:
                image = input_side(image, recipe.data.direction)
            except DataError as error:
                raise DataError(f"{file}: {error}") from None
        return to_tensor(image, in_channels).to(torch_device)

    written = []
    with generator_mode(generator, mode):
        for group, x in batches(files, load, batch_size):
            y = translate_batch(run, x, multiple, tile, overlap, batch_size)
            for file, image in zip(group, to_uint8(y)):
                target = output / f"{file.stem}.png"
                Image.fromarray(image).save(target)
                written.append(target)
                if on_progress:
                    on_progress(len(written), len(files))
    return written
