"""Inference on image files of any size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from i2i.data.aligned import read_rgb
from i2i.data.base import IMAGE_SUFFIXES, DataError
from i2i.engine.build import resolve_device
from i2i.engine.inference import generator_mode, load_generator
from i2i.visual import to_uint8


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple (the U-Net halves the size num_downs times)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    if channels == 1 and image.shape[2] == 3:
        image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1).unsqueeze(0)


@torch.no_grad()
def translate_paths(checkpoint: Path, source: Path, output: Path, aligned: bool = False, mode: str = "eval", device: str = "auto") -> list[Path]:
    if mode not in ("eval", "train"):
        raise DataError(f"--mode must be eval or train, got {mode!r}")
    torch_device = resolve_device(device)
    generator, recipe, metadata = load_generator(checkpoint, torch_device)
    in_channels = int(metadata["in_channels"])
    multiple = 2 ** recipe.model.generator.params.get("num_downs", 8)
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images found at {source}")
    output.mkdir(parents=True, exist_ok=True)
    written = []
    with generator_mode(generator, mode):
        for file in files:
            image = read_rgb(file)
            if aligned:
                half = image.shape[1] // 2
                a, b = image[:, :half], image[:, half:]
                image = b if recipe.data.direction == "BtoA" else a
            x, (h, w) = pad_to_multiple(to_tensor(image, in_channels).to(torch_device), multiple)
            y = generator(x)[..., :h, :w]
            target = output / f"{file.stem}.png"
            Image.fromarray(to_uint8(y)[0]).save(target)
            written.append(target)
    return written
