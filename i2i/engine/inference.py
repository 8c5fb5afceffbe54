"""Loading a trained generator and running it."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Literal

import torch
import yaml
from torch import nn

from i2i.engine.checkpoint import CheckpointError, latest_checkpoint, load_weights, read_metadata
from i2i.recipe import Recipe, validate_recipe

Mode = Literal["train", "eval"]


@contextlib.contextmanager
def generator_mode(model: nn.Module, mode: Mode, seed: int | None = None) -> Iterator[nn.Module]:
    """``eval``: running BatchNorm statistics, no dropout. ``train``: what pix2pix does at
    test time, batch statistics and dropout, leaving the running statistics (and their
    counter) as they were. ``seed``: dropout draws from an RNG forked off the global one
    and seeded, so the draws repeat and a training run's random stream does not move."""
    was_training = model.training
    saved = {}
    if mode == "train":
        model.train()
        for layer in model.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                counter = layer.num_batches_tracked
                saved[layer] = (layer.momentum, None if counter is None else counter.clone())
                layer.momentum = 0.0  # running stats: r <- (1 - 0) * r + 0 * batch = r
    else:
        model.eval()
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
        for layer, (momentum, counter) in saved.items():
            layer.momentum = momentum
            if counter is not None:
                layer.num_batches_tracked.copy_(counter)
        model.train(was_training)


def resolve_generator_file(checkpoint: Path) -> Path:
    """A run directory, a checkpoint folder or a generator .safetensors file."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        return checkpoint
    if (checkpoint / "generator.safetensors").is_file():
        return checkpoint / "generator.safetensors"
    latest = latest_checkpoint(checkpoint)
    if latest is None:
        raise CheckpointError(f"no checkpoint in {checkpoint} (expected a run directory, a checkpoint folder or a .safetensors file)")
    return latest / "generator.safetensors"


def load_generator(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Recipe, dict[str, str]]:
    """The generator with its weights, the recipe it was trained with, and the file's metadata."""
    from i2i.engine.build import build_generator

    file = resolve_generator_file(checkpoint)
    metadata = read_metadata(file)
    try:
        recipe_data = yaml.safe_load(metadata["recipe"])
        channels = int(metadata["in_channels"]), int(metadata["out_channels"])
    except (KeyError, ValueError, yaml.YAMLError) as error:
        raise CheckpointError(
            f"{file} lacks readable i2i metadata (recipe, in_channels, out_channels): "
            f"{type(error).__name__}: {str(error)[:200]}; it was not written by i2i"
        ) from None
    recipe = validate_recipe(recipe_data, f"{file} (embedded recipe)")
    generator = build_generator(recipe, *channels)
    load_weights(generator, file)
    return generator.to(device), recipe, metadata
