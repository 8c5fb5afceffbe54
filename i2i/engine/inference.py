"""Loading a trained generator and running it on images of any size.

The generators are fully convolutional, so an image of any size goes through in
one piece once it is padded to a multiple of the generator's total downsampling
(its ``size_multiple``; 256 where a generator does not say, which every
power-of-two downsampling up to 256 divides). Images larger than the tile are cut
into overlapping tiles whose outputs are blended with weights that fall off
towards the tile edges, so seams do not show and memory stays bounded.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from pathlib import Path
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from i2i.data.base import DataError
from i2i.engine.checkpoint import (
    CheckpointError,
    check_layout,
    fit_weights,
    list_checkpoints,
    read_layout,
    read_weights,
    verify_in_manifest,
)
from i2i.engine.limits import MAX_SIDE, check_limits, forward_memory_problem, smallest_side
from i2i.modes import Mode
from i2i.recipe import ComponentSpec, Recipe, without_file_params
from i2i.registry import GENERATORS, METHODS

Direction = Literal["AtoB", "BtoA"]  # A -> B: the recipe's input to its target
DIRECTIONS = ("AtoB", "BtoA")
GENERATOR_FILE = "generator.safetensors"  # the trained weights, what a resumed run continues from
# The weights for inference, where the run wrote them: the averaged generator (train.ema) with
# BatchNorm statistics recomputed for eval mode (train.eval_bn_batches).
INFERENCE_WEIGHTS = "generator_eval"
INFERENCE_FILE = f"{INFERENCE_WEIGHTS}.safetensors"
DEFAULT_MULTIPLE = 256  # for generators that do not declare `size_multiple`
MAX_TILES = 4096  # per image: beyond this a tile/overlap setting is a mistake, not a plan
MAX_CHANNELS = 64  # image channels a generator's metadata may declare; the datasets give 1 or 3


class GeneratorMetadata(BaseModel):
    """What a weights file (or an ONNX export) says about its generator, checked as a recipe
    file is: the file may come from anywhere, so its metadata is untrusted input."""

    model_config = ConfigDict(extra="allow")
    recipe: str
    in_channels: int = Field(ge=1, le=MAX_CHANNELS)
    out_channels: int = Field(ge=1, le=MAX_CHANNELS)
    size_multiple: int | None = Field(None, ge=1, le=MAX_SIDE)
    step: int | None = Field(None, ge=0)


def read_generator_metadata(metadata: dict[str, str], source: Path) -> tuple[Recipe, dict[str, str]]:
    """The recipe in ``metadata`` (validated and within the limits of a recipe file, without the
    params that name files: ``without_file_params``) and the metadata with its numbers checked
    and ``size_multiple`` filled in (one the generator's own multiple divides; another would pad
    images to sizes the generator cannot take)."""
    try:
        fields = GeneratorMetadata.model_validate(metadata)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"]))
        got = "" if first["type"] == "missing" else f" (got {str(first.get('input'))[:40]!r})"
        raise CheckpointError(f"{source} lacks readable i2i metadata: {where}: {first['msg']}{got}; it was not written by i2i, or was altered") from None
    try:
        recipe_data = yaml.safe_load(fields.recipe)
    except (yaml.YAMLError, ValueError) as error:
        raise CheckpointError(f"{source}: the recipe in its metadata is not valid YAML ({str(error).splitlines()[0]})") from None
    recipe = Recipe.from_dict(without_file_params(recipe_data), f"{source} (embedded recipe)")
    check_limits(recipe, f"{source} (embedded recipe)", training=False)
    checked = {**metadata, "in_channels": str(fields.in_channels), "out_channels": str(fields.out_channels)}
    spec = generator_role(recipe, checked)[0]  # the network this file holds (a CycleGAN run has two)
    needed = GENERATORS.get(spec.name, recipe.plugins).obj.size_multiple_for(spec.params)
    multiple = fields.size_multiple or needed
    forward = recipe.model.generator
    if multiple % needed and spec is not forward:
        # a B -> A file written before each generator kept its own multiple holds the A -> B one's
        if multiple == GENERATORS.get(forward.name, recipe.plugins).obj.size_multiple_for(forward.params):
            multiple = needed
    if multiple % needed:
        raise CheckpointError(
            f"{source}: metadata size_multiple {multiple} does not suit generator {spec.name}, whose input sides must "
            f"divide by {needed}; the file was altered"
        )
    _check_passes_fit(source, recipe, spec, fields.in_channels, fields.out_channels, multiple)
    return recipe, {**checked, "size_multiple": str(multiple)}


def _check_passes_fit(source: Path, recipe: Recipe, spec: ComponentSpec, in_channels: int, out_channels: int,
                      multiple: int) -> None:
    """Every image is padded to at least ``size_multiple`` a side, and the fast backend and the
    export run the generator at the recipe's crop: one such pass must fit in memory (a copy on
    the meta device measures it, allocating nothing)."""
    with torch.device("meta"):
        generator = GENERATORS.build(spec.name, spec.params, plugins=recipe.plugins, in_channels=in_channels,
                                     out_channels=out_channels)
    for what, side in ((f"metadata size_multiple {multiple}: every image is padded to a multiple of it, and", multiple),
                       (f"the embedded recipe's data.crop_size {recipe.data.crop_size}: the export and the fast "
                        f"backends run the generator at it, and", recipe.data.crop_size)):
        problem = forward_memory_problem(generator, side, 1, "cpu")
        if problem:
            raise CheckpointError(f"{source}: {what} {problem}; the file was altered, or needs a larger machine")


def input_side_floor(recipe: Recipe, metadata: dict[str, str]) -> int:
    """The smallest side inputs are padded to for the generator a file's ``metadata`` describes
    (``limits.smallest_side``): at least its ``size_multiple``."""
    spec = generator_role(recipe, metadata)[0]
    entry = GENERATORS.get(spec.name, recipe.plugins)
    return smallest_side(entry, spec.params.model_dump_json(), int(metadata["size_multiple"]))


def per_image_forward(layer: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """``layer`` normalizing each image of ``x`` by its own statistics, with its learned scale
    and shift: what a BatchNorm layer does in training at batch size 1, for a batch of any
    size; the stored statistics are neither read nor written. A subclass (timm's
    BatchNormAct2d adds an activation) runs its own forward, one image at a time. Where an
    image has one value per channel its own statistics are undefined (training at batch 1
    could not run there either): the stored ones serve."""
    one_value = x[0, 0].numel() == 1
    if type(layer) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and not one_value:
        return F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=layer.eps)
    training, tracking = layer.training, layer.track_running_stats
    layer.training, layer.track_running_stats = not one_value, tracking and one_value
    try:
        forward = type(layer).forward
        return forward(layer, x) if one_value else torch.cat([forward(layer, image[None]) for image in x])
    finally:
        layer.training, layer.track_running_stats = training, tracking


class PerImageNormalization(nn.Module):
    """A BatchNorm layer in ``per_image_forward``'s form, for a model copy's modules (plain
    BatchNorm exports to ONNX as InstanceNormalization)."""

    def __init__(self, layer: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return per_image_forward(self.layer, x)


@contextlib.contextmanager
def generator_mode(model: nn.Module, mode: Mode, seed: int | None = None) -> Iterator[nn.Module]:
    """How BatchNorm and dropout behave at inference (docs/bench.md, generator modes):

    - ``eval``: the stored BatchNorm statistics, no dropout;
    - ``instance``: each image normalized by its own statistics, as a generator trained at
      batch size 1 always was, no dropout: deterministic, and the same for any batch;
    - ``train``: each image's own statistics and dropout, the pix2pix reference's test (it
      runs one image at a time in train mode).

    The stored statistics are never touched. ``seed``: dropout draws from an RNG forked off
    the global one and seeded, so the draws repeat and a training run's random stream does
    not move."""
    was_training = model.training
    model.train(mode == "train")
    layers = [] if mode == "eval" else [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.forward = functools.partial(per_image_forward, layer)  # an instance attribute, removed below
    device = next(model.parameters(), torch.empty(0)).device
    forked = contextlib.nullcontext()
    if seed is not None:
        forked = torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else [])
    try:
        with forked:
            if seed is not None:
                torch.manual_seed(seed)
            yield model
    finally:
        for layer in layers:
            del layer.forward
        model.train(was_training)


def inference_file(folder: Path) -> Path:
    """The generator weights of a checkpoint folder to use: its inference weights where it has them."""
    return folder / INFERENCE_FILE if (folder / INFERENCE_FILE).is_file() else folder / GENERATOR_FILE


def resolve_generator_file(checkpoint: Path, warn: Callable[[str], None] = warnings.warn) -> Path:
    """A generator .safetensors file, a checkpoint folder, or a run directory (its newest
    checkpoint whose generator matches the manifest; damaged newer ones go to ``warn``).
    Wherever a manifest lists the file, the file must match it. A folder gives its inference
    weights (``INFERENCE_FILE``) where the run wrote them, else its trained generator."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file() or inference_file(checkpoint).is_file():
        file = checkpoint if checkpoint.is_file() else inference_file(checkpoint)
        verify_in_manifest(file)
        return file
    if not checkpoint.exists():
        raise CheckpointError(f"checkpoint not found: {checkpoint} (expected a run directory, a checkpoint folder or a .safetensors file)")
    damaged = []
    for folder in reversed(list_checkpoints(checkpoint / "checkpoints")):
        try:
            verify_in_manifest(inference_file(folder))
        except CheckpointError as error:
            damaged.append(str(error))
            continue
        for problem in damaged:
            warn(f"passing over a damaged checkpoint: {problem}")
        return inference_file(folder)
    if damaged:
        raise CheckpointError(f"no usable checkpoint in {checkpoint}:\n  " + "\n  ".join(damaged))
    raise CheckpointError(f"no checkpoint in {checkpoint} (expected a run directory, a checkpoint folder or a .safetensors file)")


def reverse_generator_name(file: Path) -> str:
    """The file name of the B -> A generator of the run whose A -> B generator is ``file``,
    where the run's method trains one."""
    recipe, _ = read_generator_metadata(read_layout(file)[0], file)
    name = METHODS.get(recipe.method.name, recipe.plugins).obj.directions.get("BtoA")
    if name is None:
        raise CheckpointError(f"{file.parent}: method {recipe.method.name} trains one generator, A -> B; "
                              "there is no B -> A translation (direction AtoB)")
    return f"{name}.safetensors"


def reverse_generator_file(file: Path) -> Path:
    """The B -> A generator beside the A -> B generator ``file``, where the run's method trains one."""
    reverse = file.with_name(reverse_generator_name(file))
    if not reverse.is_file():
        raise CheckpointError(f"{reverse} not found: direction BtoA needs the run directory or checkpoint folder "
                              f"of the run, or its {reverse.name} itself")
    verify_in_manifest(reverse)
    return reverse


def generator_role(recipe: Recipe, metadata: dict[str, str]) -> tuple[ComponentSpec, int, int, str]:
    """(spec, in_channels, out_channels, direction) of the network a weights file holds: its
    ``network`` metadata names it; the channels in the metadata are the run's, A -> B."""
    channels = int(metadata["in_channels"]), int(metadata["out_channels"])
    reverse = METHODS.get(recipe.method.name, recipe.plugins).obj.directions.get("BtoA")
    if reverse is not None and metadata.get("network") == reverse:
        return getattr(recipe.model, reverse, None) or recipe.model.generator, channels[1], channels[0], "BtoA"
    return recipe.model.generator, *channels, "AtoB"


def load_generator(
    checkpoint: Path, device: torch.device | str = "cpu", warn: Callable[[str], None] = warnings.warn,
    direction: Direction = "AtoB",
) -> tuple[nn.Module, Recipe, dict[str, str]]:
    """The generator with its weights, the recipe it was trained with, and the file's metadata
    (checked by ``read_generator_metadata``; ``in_channels``/``out_channels`` those of this
    generator, ``direction`` filled in). ``direction`` BtoA: the run's other generator (CycleGAN's
    ``generator_ba``). The one way weights are read for use: the metadata and the tensors'
    names, shapes and dtypes are checked from the header before any tensor is read, then the
    manifest and the file's own checksum, then every value."""
    if direction not in DIRECTIONS:
        raise DataError(f"direction must be AtoB or BtoA, got {direction!r}")
    file = resolve_generator_file(checkpoint, warn)
    if direction == "BtoA":
        file = reverse_generator_file(file)
    metadata, layout = read_layout(file)
    recipe, metadata = read_generator_metadata(metadata, file)
    spec, in_channels, out_channels, direction = generator_role(recipe, metadata)
    metadata = {**metadata, "in_channels": str(in_channels), "out_channels": str(out_channels), "direction": direction}
    generator = GENERATORS.build(spec.name, spec.params, plugins=recipe.plugins, in_channels=in_channels,
                                 out_channels=out_channels)
    check_layout(generator, layout, file)
    fit_weights(generator, read_weights(file)[0], file)
    return generator.to(device), recipe, metadata


def finite(y: torch.Tensor) -> bool:
    """Every value finite, in one pass that allocates nothing per element."""
    low, high = y.aminmax()
    return bool(torch.isfinite(low) & torch.isfinite(high))


def pad_to_multiple(x: torch.Tensor, multiple: int, floor: int = 1) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad H and W up to a multiple, and to at least ``floor`` (replicate where the image
    is too small to reflect)."""
    h, w = x.shape[-2:]
    ph, pw = max(floor - h, (-h) % multiple), max(floor - w, (-w) % multiple)
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def tile_size(tile: int, overlap: int, multiple: int) -> int:
    """``tile`` rounded down to the generator's multiple (at least one multiple); refused
    unless ``overlap`` stays below it, so that the tiles advance and cover every pixel."""
    if tile < 1 or overlap < 0:
        raise DataError(f"need tile >= 1 and overlap >= 0 (got tile {tile}, overlap {overlap})")
    rounded = max(multiple, tile - tile % multiple)
    if overlap >= rounded:
        raise DataError(
            f"overlap {overlap} must be smaller than the tile, which is {rounded} px "
            f"(tile {tile} rounded to the generator's multiple of {multiple}); "
            f"need overlap < tile: lower the overlap or raise the tile"
        )
    return rounded


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


def tile_windows(h: int, w: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """(top, left) of every window over an h x w image; more than MAX_TILES is refused."""
    rows, columns = tile_starts(h, min(tile, h), overlap), tile_starts(w, min(tile, w), overlap)
    if len(rows) * len(columns) > MAX_TILES:
        raise DataError(
            f"a {w}x{h} image needs {len(rows) * len(columns)} tiles of {tile} px overlapping by {overlap} px, "
            f"over the limit of {MAX_TILES}; use a larger tile or a smaller overlap"
        )
    return [(top, left) for top in rows for left in columns]


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
    windows = tile_windows(h, w, tile, overlap)
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
    floor: int = 1,
) -> torch.Tensor:
    """Images of one size in, translated images of that size out; ``tile`` is rounded to
    ``multiple`` as ``tile_size`` says. ``floor``: the smallest side the generator runs at (a
    multiple of ``multiple``); smaller images and tiles are padded up to it."""
    tile = max(tile_size(tile, overlap, multiple), floor)
    padded, (h, w) = pad_to_multiple(x, multiple, floor)
    if padded.shape[-2] <= tile and padded.shape[-1] <= tile:
        y = generator(padded).float()
    else:
        y = run_tiled(generator, padded, tile, overlap, batch_size)
    return y[..., :h, :w]
