"""``i2i translate``: image files through ``i2i.api`` into a folder of PNGs.

Each input keeps its size (padding and tiling: ``i2i.engine.inference``). Outputs are
named ``<stem>.png``; inputs that share a stem (``x.jpg`` and ``x.png``) keep their
extension instead (``x.jpg.png``, ``x.png.png``), and names that would still collide
(compared without case, as some file systems do) are refused before anything runs.
An output that would replace an input file (the same file, through any path or link)
is refused too. Each output is written under a new temporary name (``i2i.safe_files``) and renamed into place.

``mode`` (``i2i.modes``): ``instance``, the default, normalizes each image (or
tile) by its own statistics and drops no units, so a result depends on its image
alone; ``eval`` uses BatchNorm's stored statistics; ``train`` is what the pix2pix
reference does at test time: each image's own statistics and active dropout (a
different result per seed). An image larger than the tile is normalized tile by
tile in ``instance`` and ``train`` mode; use a tile larger than the image to
match the reference.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image

from i2i.api import consecutive_batches, load, to_tensor
from i2i.data.base import DataError, list_images
from i2i.data.images import read_rgb
from i2i.modes import DEFAULT_MODE
from i2i.safe_files import replacing
from i2i.visual import to_uint8

BAD_IMAGE_CHOICES = ("error", "skip")


def input_side(image: np.ndarray, direction: str) -> np.ndarray:
    """The input half of an aligned A|B image: A for AtoB, B for BtoA."""
    if image.shape[1] % 2:
        raise DataError(f"width {image.shape[1]} is odd; an aligned image is two halves side by side (A|B)")
    half = image.shape[1] // 2
    return image[:, half:] if direction == "BtoA" else image[:, :half]


def input_half(translator) -> str:
    """Which half of an A|B file the translator takes: the recipe's input side, the other
    for a run's B -> A generator."""
    trained = translator.recipe.data.direction
    if translator.metadata.get("direction") == "BtoA":
        return "AtoB" if trained == "BtoA" else "BtoA"
    return trained


def output_paths(files: list[Path], output: Path) -> list[Path]:
    """``output/<stem>.png`` per input, ``<name>.png`` for inputs sharing a stem; refused
    when names still collide."""
    stems = Counter(file.stem.casefold() for file in files)
    names = [f"{file.stem if stems[file.stem.casefold()] == 1 else file.name}.png" for file in files]
    taken = Counter(name.casefold() for name in names)
    colliding = [str(file) for file, name in zip(files, names) if taken[name.casefold()] > 1]
    if colliding:
        raise DataError(f"these inputs would be written to the same output name: {', '.join(colliding)}; rename some of them")
    return [output / name for name in names]


def refuse_overwriting_inputs(files: list[Path], targets: list[Path], output: Path) -> None:
    """Compared as files (device and inode), after resolving the output folder as the kernel
    will once it exists (``out/new/..`` is ``out``)."""
    inputs = {(s.st_dev, s.st_ino) for s in map(os.stat, files)}
    resolved = [output.resolve() / t.name for t in targets]
    clobbered = [str(t) for t, r in zip(targets, resolved) if r.exists() and (r.stat().st_dev, r.stat().st_ino) in inputs]
    if clobbered:
        shown = ", ".join(clobbered[:5]) + (f" and {len(clobbered) - 5} more" if len(clobbered) > 5 else "")
        raise DataError(f"--output {output} would overwrite input images ({shown}); choose another output folder")


def make_output_folder(output: Path) -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the output folder {output}: {error.strerror or error}") from None


def write_png(pixels: np.ndarray, target: Path) -> None:
    """Under a new temporary name first (never through a link planted there), so a failure
    never leaves half an image behind."""
    try:
        with replacing(target) as handle:
            Image.fromarray(pixels).save(handle, format="PNG")
    except OSError as error:
        raise DataError(f"cannot write {target}: {error.strerror or error}") from None


@torch.no_grad()
def translate_paths(
    checkpoint: str | Path,
    source: Path,
    output: Path,
    aligned: bool = False,
    mode: str = DEFAULT_MODE,
    device: str = "auto",
    tile: int = 1024,
    overlap: int = 64,
    batch_size: int = 1,
    on_progress: Callable[[int, int], None] | None = None,
    backend: str = "torch",
    on_bad_image: str = "error",
    on_skip: Callable[[Path, str], None] | None = None,
    warn: Callable[[str], None] = warnings.warn,
    direction: str = "AtoB",
) -> list[Path]:
    """Translate an image file or every image in a folder into ``output`` (PNG, named as the
    module docstring says); ``checkpoint`` is anything ``i2i.load`` takes. ``on_bad_image``:
    ``error`` stops at an image that cannot be read, ``skip`` passes it to ``on_skip(file,
    reason)`` and goes on. ``on_progress(done, total)`` follows each image written or skipped.
    ``direction``: as ``i2i.load``'s (BtoA: a CycleGAN run's other generator)."""
    if on_bad_image not in BAD_IMAGE_CHOICES:
        raise DataError(f"--on-bad-image must be error or skip, got {on_bad_image!r}")
    source, output = Path(source), Path(output)
    if not source.exists():
        raise DataError(f"input not found: {source}")
    files = [source] if source.is_file() else list_images(source)
    targets = output_paths(files, output)
    if output.exists() and not output.is_dir():
        raise DataError(f"--output {output} is a file; give a folder (it is created if missing)")
    refuse_overwriting_inputs(files, targets, output)
    translator = load(
        checkpoint, device, mode, backend, tile=tile, overlap=overlap, batch_size=batch_size, warn=warn,
        direction=direction,
    )
    make_output_folder(output)
    done = 0

    def readable() -> Iterator[tuple[Path, Path, torch.Tensor]]:
        nonlocal done
        for file, target in zip(files, targets):
            try:
                image = read_rgb(file)
                if aligned:
                    try:
                        image = input_side(image, input_half(translator))
                    except DataError as error:
                        raise DataError(f"{file}: {error}") from None
            except DataError as error:
                if on_bad_image == "error":
                    raise
                done += 1
                if on_skip:
                    on_skip(file, str(error))
                if on_progress:
                    on_progress(done, len(files))
                continue
            yield file, target, to_tensor(image, translator.in_channels)

    written = []
    for group in consecutive_batches(readable(), lambda item: item[2].shape, batch_size):
        try:
            y = translator.translate_tensor(torch.cat([x for _, _, x in group]))
        except DataError as error:
            raise DataError(f"{group[0][0]}: {error}") from None
        for (_, target, _), pixels in zip(group, to_uint8(y)):
            write_png(pixels, target)
            written.append(target)
            done += 1
            if on_progress:
                on_progress(done, len(files))
    return written
