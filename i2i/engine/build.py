"""Turn a validated recipe into datasets, networks and losses."""

from __future__ import annotations

import torch

from i2i.contracts import Discriminator, Generator, Method, PairedDataset
from i2i.recipe import Recipe
from i2i.errors import I2IError
from i2i.registry import DATASETS, DISCRIMINATORS, GENERATORS, METHODS


def build_dataset(recipe: Recipe, split: str = "train", train: bool = True) -> PairedDataset:
    spec = recipe.data.dataset
    return DATASETS.build(
        spec.name, spec.params, plugins=recipe.plugins, data=recipe.data, split=split, train=train, seed=recipe.train.seed
    )


def build_generator(recipe: Recipe, in_channels: int, out_channels: int) -> Generator:
    spec = recipe.model.generator
    return GENERATORS.build(spec.name, spec.params, plugins=recipe.plugins, in_channels=in_channels, out_channels=out_channels)


def build_discriminator(recipe: Recipe, in_channels: int, out_channels: int) -> Discriminator:
    """The discriminator sees (condition, image) stacked on channels."""
    spec = recipe.model.discriminator
    return DISCRIMINATORS.build(spec.name, spec.params, plugins=recipe.plugins, in_channels=in_channels + out_channels)


def network_name(recipe: Recipe, role: str, network: torch.nn.Module) -> str:
    """The registry name a method's network was built from (a second direction's spec defaults
    to the first's); the class name for a network of the method's own (CUT's ``nce_heads``)."""
    spec = getattr(recipe.model, role, None) or getattr(recipe.model, role.split("_")[0], None)
    return spec.name if spec is not None else type(network).__name__


def build_method(recipe: Recipe) -> Method:
    spec = recipe.method
    return METHODS.build(spec.name, spec.params, plugins=recipe.plugins, recipe=recipe)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise I2IError(f"device {name!r} is not one torch knows ({error}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise I2IError(f"train.device is {name!r} but CUDA is not available; use 'cpu' or 'auto'")
    return device


def cpu_has_fast_bf16() -> bool:
    """AMX or AVX-512 bf16 make CPU autocast to bf16 worthwhile."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX"):
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str | None, device: torch.device) -> torch.dtype:
    """The autocast dtype (float32 = no autocast). ``auto`` (or unset) picks bf16 where the hardware runs it fast."""
    if precision == "fp32":
        return torch.float32
    if precision == "fp16":
        if device.type != "cuda":
            raise I2IError("precision fp16 needs CUDA; on CPU use bf16 or fp32")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
