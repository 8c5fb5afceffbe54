"""Using a trained generator from Python: ``i2i.load`` it and call it on images.

    import i2i
    translator = i2i.load("runs/pix2pix_maps")
    translator(Image.open("map.png")).save("aerial.png")

``load`` takes a run directory (its newest checkpoint whose generator matches its
sha256), a checkpoint folder, a generator ``.safetensors``, an ``.onnx`` export
(run with onnxruntime), a name of the model catalogue (``i2i models list``) or
``hf://owner/repo[@revision]`` (pass that one as a str: a Path folds the ``//``).

A ``Translator`` takes what it is given and returns the same kind, at the input's
size (padded to the generator's ``size_multiple``, tiled above ``tile``; see
``i2i.engine.inference``):

- a PIL image, modes ``PIL_MODES`` (alpha over white, 16-bit gray scaled to 8 bits,
  as image files are read) -> a PIL image, RGB (or L for a one-channel generator);
- a numpy uint8 array HxW, HxWx1, HxWx3 or HxWx4 (RGBA) -> uint8 HxWxC, C = ``out_channels``;
- a torch float tensor CxHxW or NxCxHxW with C = ``in_channels`` and values in [-1, 1],
  on any device -> a float32 tensor of the same rank in [-1, 1] on that device, not rounded;
- a list (or tuple) of these -> a list; consecutive images of one size share a batch
  of up to ``batch_size``.

Colour inputs go to a one-channel generator as gray, gray inputs to a three-channel
one as gray RGB.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

from i2i.data.base import DataError, to_tensor as image_to_tensor
from i2i.data.images import to_rgb
from i2i.engine.build import resolve_device
from i2i.engine.checkpoint import CheckpointError
from i2i.engine.inference import (
    DEFAULT_MULTIPLE,
    DIRECTIONS,
    finite,
    generator_mode,
    input_side_floor,
    load_generator,
    tile_size,
    translate_batch,
)
from i2i.export import onnxruntime_generator
from i2i.hub import download_from_hub
from i2i.model_catalogue import MODELS, ensure_model, is_model_name
from i2i.modes import DEFAULT_MODE, MODES
from i2i.recipe import Recipe
from i2i.visual import quantize

BACKENDS = ("torch", "fast", "compiled", "onnxruntime")
PIL_MODES = ("1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "I", "I;16", "I;16B", "I;16L", "I;16N")
HUB_PREFIX = "hf://"

Item = TypeVar("Item")


class Translator:
    """A trained generator applied to whole images; see the module docstring for what it takes."""

    def __init__(
        self,
        generator: nn.Module,
        run: Callable[[torch.Tensor], torch.Tensor],
        recipe: Recipe,
        metadata: dict[str, str],
        mode: str,
        device: torch.device,
        backend: str,
        tile: int,
        overlap: int,
        batch_size: int,
    ):
        self.generator = generator
        self._run = run
        self.recipe = recipe
        self.metadata = metadata
        self.mode = mode
        self.device = device
        self.backend = backend
        self.in_channels = int(metadata["in_channels"])
        self.out_channels = int(metadata["out_channels"])
        self.size_multiple = int(metadata.get("size_multiple") or getattr(generator, "size_multiple", DEFAULT_MULTIPLE))
        # the smallest side the generator runs at: smaller images (and tiles) are padded up to it
        self.floor = input_side_floor(recipe, {**metadata, "size_multiple": str(self.size_multiple)})
        self.tile = max(tile_size(tile, overlap, self.size_multiple), self.floor)  # rounded to the multiple
        self.overlap = overlap
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return (
            f"Translator(recipe={self.recipe.name!r}, mode={self.mode!r}, device='{self.device}', "
            f"backend={self.backend!r}, channels {self.in_channels} -> {self.out_channels}, "
            f"size_multiple={self.size_multiple}, tile={self.tile}, overlap={self.overlap})"
        )

    def __call__(self, images: Any) -> Any:
        many = isinstance(images, (list, tuple))
        items = list(images) if many else [images]
        inputs = [self._as_tensor(item) for item in items]
        singles = [x[i : i + 1] for x in inputs for i in range(len(x))]
        outputs: list[torch.Tensor] = []
        for group in consecutive_batches(singles, lambda x: x.shape, self.batch_size):
            outputs += self.translate_tensor(torch.cat(group)).split(1)
        pieces = iter(outputs)
        results = [self._as_kind(torch.cat([next(pieces) for _ in range(len(x))]), item) for x, item in zip(inputs, items)]
        return results if many else results[0]

    @torch.no_grad()
    def translate_tensor(self, x: torch.Tensor) -> torch.Tensor:
        """NxCxHxW in [-1, 1] -> NxC'xHxW float32 in [-1, 1] on this translator's device, as one
        batch (or its tiles, ``batch_size`` at a time)."""
        with generator_mode(self.generator, self.mode):
            y = translate_batch(self._run, x.to(self.device), self.size_multiple, self.tile, self.overlap,
                                self.batch_size, self.floor)
        if not finite(y):  # finite weights can still overflow (huge values): NaN pixels would be written as black
            raise CheckpointError(f"the generator of recipe {self.recipe.name!r} gives NaN or infinite values for this "
                                  f"image: its weights overflow, and it cannot translate anything")
        return y

    def _as_tensor(self, item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            if not item.is_floating_point() or item.ndim not in (3, 4) or item.shape[-3] != self.in_channels:
                raise DataError(
                    f"a tensor image must be float, CxHxW or NxCxHxW with C = {self.in_channels} (the generator's "
                    f"input channels), values in [-1, 1]; got {item.dtype} of shape {tuple(item.shape)}"
                )
            x = item.float() if item.ndim == 4 else item.float()[None]
        elif isinstance(item, Image.Image):
            x = to_tensor(pil_to_rgb(item), self.in_channels)
        elif isinstance(item, np.ndarray):
            x = to_tensor(array_to_rgb(item), self.in_channels)
        else:
            raise DataError(
                f"cannot translate a {type(item).__name__}: give a PIL image, a numpy uint8 array (HxWxC), "
                f"a torch tensor (CxHxW or NxCxHxW in [-1, 1]) or a list of them"
            )
        if x.shape[-1] == 0 or x.shape[-2] == 0:
            raise DataError(f"an empty image ({x.shape[-1]}x{x.shape[-2]} pixels) has nothing to translate")
        return x

    def _as_kind(self, y: torch.Tensor, item: Any) -> Any:
        """``y`` (NxCxHxW in [-1, 1]) as the kind of ``item``."""
        if isinstance(item, torch.Tensor):
            return (y if item.ndim == 4 else y[0]).to(item.device)
        pixels = quantize(y)[0].permute(1, 2, 0).cpu().numpy()
        if isinstance(item, np.ndarray):
            return pixels
        return Image.fromarray(pixels[..., 0] if self.out_channels == 1 else pixels)


def consecutive_batches(items: Iterable[Item], shape: Callable[[Item], Any], size: int) -> Iterator[list[Item]]:
    """Runs of consecutive items of one shape, up to ``size`` at a time."""
    group: list[Item] = []
    for item in items:
        if group and (len(group) == size or shape(item) != shape(group[0])):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8, converted as image files are (``i2i.data.images``)."""
    if image.mode not in PIL_MODES:
        raise DataError(
            f"PIL image mode {image.mode!r} is not supported; use one of {', '.join(PIL_MODES)} "
            f"(for example image.convert('RGB'))"
        )
    return to_rgb(image, "the PIL image")


def array_to_rgb(array: np.ndarray) -> np.ndarray:
    """HxWx3 uint8 from uint8 HxW, HxWx1 (gray), HxWx3 (RGB) or HxWx4 (RGBA, alpha over white)."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise DataError(
            f"a numpy image must be uint8 of shape HxW or HxWxC with C = 1 (gray), 3 (RGB) or 4 (RGBA); "
            f"got {array.dtype} of shape {array.shape}"
        )
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 4:
        return to_rgb(Image.fromarray(np.ascontiguousarray(array), "RGBA"), "the numpy image")
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def to_tensor(image: np.ndarray, channels: int) -> torch.Tensor:
    """HxWx3 uint8 -> 1xCxHxW float in [-1, 1]; gray (ITU-R 601, as PIL) where ``channels`` is 1."""
    if channels == 1 and image.shape[2] == 3:
        image = np.asarray(Image.fromarray(image).convert("L"))[..., None]
    return image_to_tensor(image).unsqueeze(0)


def resolve_source(source: str | Path, direction: str = "AtoB") -> Path:
    """A local path to the weights: as given, from the model catalogue or from the Hub (for
    ``direction`` BtoA with the run's other generator beside it)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return download_from_hub(text[len(HUB_PREFIX) :], direction)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if is_model_name(text):
        return ensure_model(text)
    close = difflib.get_close_matches(text, list(MODELS))
    raise CheckpointError(
        f"{text} not found: it is no run directory, checkpoint folder, .safetensors or .onnx file, "
        f"no model of the catalogue (`i2i models list`) and no hf://owner/repo"
        + (f"; did you mean {' or '.join(close)}?" if close else "")
    )


def load(
    source: str | Path,
    device: str = "auto",
    mode: str = DEFAULT_MODE,
    backend: str = "torch",
    *,
    tile: int = 1024,
    overlap: int = 64,
    batch_size: int = 1,
    warn: Callable[[str], None] | None = None,
    direction: str = "AtoB",
) -> Translator:
    """A ``Translator`` for ``source`` (see the module docstring).

    ``direction``: ``AtoB``, the run's own translation (the recipe's input to its target), or
    ``BtoA``, its other generator where the method trains one (CycleGAN; CUT has none).

    ``mode`` (``i2i.modes``): ``instance`` (the default: each image normalized by its own
    statistics, as a generator trained at batch size 1 always was; no dropout, so the same
    result every time, whatever the batch), ``eval`` (BatchNorm's stored statistics, no
    dropout) or ``train`` (each image's own statistics and dropout, as the pix2pix
    reference tests).
    ``backend``: ``torch``; ``fast`` (bf16 where the hardware has it, in the memory layout timed faster);
    ``compiled`` (``fast`` through torch.compile, frozen weights); ``onnxruntime`` (the
    export in ``mode``, made on the fly unless ``source`` is an .onnx file, which always
    runs on onnxruntime, in the mode it was exported in). Images larger than ``tile`` (rounded down to the generator's
    ``size_multiple``) go through in tiles overlapping by ``overlap`` pixels, blended.
    ``warn`` receives notes such as a damaged newest checkpoint passed over (default:
    ``warnings.warn``).

    The weights are untrusted input: their metadata is validated as a recipe file is and
    their tensors must be finite floats of the shapes the recipe builds. Every refusal is an
    ``i2i.errors.I2IError`` subclass (``CheckpointError``, ``RecipeError``, ``DataError``,
    ``ExportError``, ``HubError``, ``ModelError``) whose message is the one line ``i2i
    translate`` prints; other exceptions are bugs."""
    if mode not in MODES:
        raise DataError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if backend not in BACKENDS:
        raise DataError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    if direction not in DIRECTIONS:
        raise DataError(f"direction must be AtoB or BtoA, got {direction!r}")
    path = resolve_source(source, direction)
    torch_device = resolve_device(device)
    if path.suffix == ".onnx" or backend == "onnxruntime":
        if backend in ("fast", "compiled"):
            raise DataError(f"{path} is an ONNX export: it runs with backend onnxruntime, not {backend}")
        generator, recipe, metadata = onnxruntime_generator(path, mode, direction, **({"warn": warn} if warn else {}))
        return Translator(generator, generator, recipe, metadata, mode, torch_device, "onnxruntime", tile, overlap, batch_size)
    generator, recipe, metadata = load_generator(path, torch_device, direction=direction, **({"warn": warn} if warn else {}))
    run: Callable[[torch.Tensor], torch.Tensor] = generator
    if backend in ("fast", "compiled"):
        from i2i.engine.fast_inference import fast_generator

        crop = recipe.data.crop_size
        example = torch.zeros(1, int(metadata["in_channels"]), crop, crop, device=torch_device)
        run = fast_generator(generator, mode, example, compile=backend == "compiled")
    return Translator(generator, run, recipe, metadata, mode, torch_device, backend, tile, overlap, batch_size)
