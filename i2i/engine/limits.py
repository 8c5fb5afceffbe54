"""Recipe values the components cannot train with, found before training starts
(``i2i validate`` and ``i2i run`` call ``check_limits``).

- ``data.load_size`` and ``data.crop_size`` stop at ``MAX_SIDE``: past it, one image alone
  takes gigabytes (the error says how many).
- The crop must be a multiple of the generator's ``size_multiple_for(params)`` (what its
  input sides must divide by), and large enough for both networks at ``train.batch_size``: a dry run
  moves them to the meta device (shapes only, no memory, no arithmetic) and runs one
  training-mode forward pass, so a bottleneck below 1x1, a BatchNorm with one value per
  channel or a generator that returns another size is an error naming the smallest crop
  that fits, not a crash at step 1. Networks that cannot run on the meta device at all
  are left to the first training step.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from typing import NamedTuple

import torch
from torch import nn

from i2i.engine.build import build_generator, build_method, resolve_device
from i2i.engine.distributed import STATE_BYTES_PER_PARAMETER, available_memory
from i2i.errors import I2IError
from i2i.recipe import ComponentSpec, Recipe, RecipeError
from i2i.registry import DISCRIMINATORS, GENERATORS, Entry

MAX_SIDE = 8192
CHECK_CHANNELS = 3  # the dry run's image channels; sizes, not channels, are what it checks
COMFORTABLE_SIDE = 256  # a crop every built-in network fits at: the dry run's control
WEIGHT_BYTES = 4  # float32


def check_limits(recipe: Recipe, source: str = "<recipe>", training: bool = True) -> None:
    """Raise a RecipeError naming ``source`` when the recipe goes past its components' limits;
    ``training``: every network the method builds must fit in memory to train (else, as for a
    weights file's embedded recipe, the generator alone to translate)."""
    problems = limit_problems(recipe) or memory_problems(recipe, training)
    if problems:
        raise RecipeError(source, problems)


def limit_problems(recipe: Recipe) -> list[str]:
    """Problems (``path: what``) of a validated recipe that its components' limits reveal."""
    data = recipe.data
    too_large = [_too_large(key, getattr(data, key)) for key in ("load_size", "crop_size") if getattr(data, key) > MAX_SIDE]
    if too_large:
        return too_large
    model = recipe.model
    pairs = [("generator", model.generator, "discriminator", model.discriminator)]
    if model.generator_ba or model.discriminator_a:  # a method's second direction, with networks of its own
        pairs.append(("generator_ba", model.generator_ba or model.generator,
                      "discriminator_a", model.discriminator_a or model.discriminator))
    for g_role, g_spec, d_role, d_spec in pairs:
        problems = _pair_problems(recipe, g_role, g_spec, d_role, d_spec)
        if problems:
            return problems
    return []


def _pair_problems(recipe: Recipe, g_role: str, g_spec: ComponentSpec, d_role: str, d_spec: ComponentSpec) -> list[str]:
    """The crop against one generator and the discriminator that judges its output."""
    g_entry, d_entry = GENERATORS.get(g_spec.name, recipe.plugins), DISCRIMINATORS.get(d_spec.name, recipe.plugins)
    g_params, d_params = g_entry.params.model_validate(g_spec.params), d_entry.params.model_validate(d_spec.params)
    multiple = g_entry.obj.size_multiple_for(g_params)
    crop = recipe.data.crop_size
    if crop % multiple:
        below, above = crop // multiple * multiple, (crop // multiple + 1) * multiple
        choices = f"{below} or {above}" if below else str(above)
        return [f"data.crop_size: {crop} is not a multiple of {multiple}, which {g_role} {g_spec.name} needs "
                f"(its input sides must divide by {multiple} with these params); use {choices}"]
    return list(_fit_problems(g_entry, g_params.model_dump_json(), d_entry, d_params.model_dump_json(),
                              crop, recipe.train.batch_size, multiple, (g_role, d_role)))


def _too_large(key: str, side: int) -> str:
    pixels = side * side * CHECK_CHANNELS
    return (f"data.{key}: {side} is above the limit of {MAX_SIDE}: one {side}x{side} RGB image alone takes "
            f"{_size(pixels)} in 8 bits and {_size(4 * pixels)} as a float32 tensor")


def _size(count: int) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


@functools.lru_cache(maxsize=256)  # one build per setup in a process that checks it often (tests, fuzzing)
def _fit_problems(
    g_entry: Entry, g_params: str, d_entry: Entry, d_params: str, crop: int, batch: int, multiple: int,
    roles: tuple[str, str] = ("generator", "discriminator"),
) -> tuple[str, ...]:
    networks = _build_on_meta(g_entry, g_params, d_entry, d_params)
    if networks is None:
        return ()
    names = (f"{roles[0]} {g_entry.name}", f"{roles[1]} {d_entry.name}")
    misfit = _dry_run(networks, *names, crop, batch)
    if misfit is None:
        return ()
    if misfit.certain:
        return (f"model.{roles[0]}: {misfit.reason}; a generator must return images of its input's size",)
    control = multiple * math.ceil(max(COMFORTABLE_SIDE, 2 * crop) / multiple)
    if _dry_run(networks, *names, control, max(batch, 2)) is not None:
        return ()  # the networks do not run on the meta device: nothing to learn from it
    low, high = crop // multiple, control // multiple  # in multiples: low fails, high fits
    while high - low > 1:
        middle = (low + high) // 2
        if _dry_run(networks, *names, middle * multiple, batch) is None:
            high = middle
        else:
            low = middle
    return (f"data.crop_size: {crop} is too small at train.batch_size {batch}: {misfit.reason}. A crop of "
            f"{high * multiple} fits (or raise train.batch_size, or use fewer downsamplings)",)


@functools.lru_cache(maxsize=64)
@torch.no_grad()
def smallest_side(entry: Entry, params: str, multiple: int) -> int:
    """The smallest side, a multiple of ``multiple``, at which the generator runs on one image in
    eval mode, tried on the meta device: inference pads smaller images up to it (a ResNet's 1x1
    bottleneck cannot be normalized or reflect-padded). ``multiple`` where the generator does
    not run on the meta device even at ``COMFORTABLE_SIDE``."""
    try:
        with torch.device("meta"):
            generator = entry.obj(entry.params.model_validate_json(params), in_channels=CHECK_CHANNELS,
                                  out_channels=CHECK_CHANNELS)
    except Exception:  # a generator that needs real memory to be built: as before, its multiple
        return multiple
    generator.eval()
    for side in range(multiple, max(COMFORTABLE_SIDE, multiple) + 1, multiple):
        try:
            generator(torch.empty(1, CHECK_CHANNELS, side, side, device="meta"))
        except Exception:
            continue
        return side
    return multiple


def parameter_count(recipe: Recipe) -> int | None:
    """Parameters of every network the recipe's method trains, built on the meta device (no
    memory); None where they cannot be built there."""
    counts = network_parameters(recipe)
    return None if counts is None else sum(counts.values())


def network_parameters(recipe: Recipe, training: bool = True) -> dict[str, int] | None:
    """Parameters per network the method builds (``training``) or of the generator alone, built
    on the meta device: the NCE heads and any other network a method makes itself count too."""
    counts = _network_parameters(recipe.model_dump_json(), training)
    return None if counts is None else dict(counts)


@functools.lru_cache(maxsize=64)  # a build per recipe in a process that checks it often (tests, fuzzing)
def _network_parameters(recipe_json: str, training: bool) -> tuple[tuple[str, int], ...] | None:
    recipe = Recipe.from_dict(json.loads(recipe_json))
    try:
        with torch.device("meta"):
            if training:
                networks = build_method(recipe).build_networks(CHECK_CHANNELS, CHECK_CHANNELS)
            else:
                networks = {"generator": build_generator(recipe, CHECK_CHANNELS, CHECK_CHANNELS)}
    except I2IError:
        raise
    except Exception:  # a component that needs real memory to be built is checked when it is built
        return None
    return tuple((name, sum(p.numel() for p in network.parameters())) for name, network in networks.items())


def memory_problems(recipe: Recipe, training: bool = True) -> list[str]:
    """The networks' weights (and, to train, their gradients and Adam's two moments) against
    the memory of the device they go to: past it, building them fails on allocation."""
    counts = network_parameters(recipe, training)
    device = resolve_device(recipe.train.device) if training else torch.device("cpu")
    memory = device_memory(device)
    if counts is None or memory is None:
        return []
    per_parameter = STATE_BYTES_PER_PARAMETER if training else WEIGHT_BYTES
    needed = per_parameter * sum(counts.values())
    if needed <= memory:
        return []
    largest = max(counts, key=counts.get)
    what = "to train (weights, gradients and Adam's two moments" if training else "to hold (float32 weights"
    return [f"{_network_path(recipe, largest)}: the networks take {_size(needed)} {what}: "
            + ", ".join(f"{name} {count:,}" for name, count in counts.items())
            + f" parameters), more than the {_size(memory)} of memory on {device}; use smaller networks"]


def _network_path(recipe: Recipe, name: str) -> str:
    """Where a recipe sets the size of network ``name``: its model spec, or the method's params."""
    if name in ("generator", "discriminator"):
        return f"model.{name}.params"
    if name in ("generator_ba", "discriminator_a"):
        own = getattr(recipe.model, name) is not None
        return f"model.{name if own else name.split('_')[0]}.params"
    return "method.params"


def device_memory(device: torch.device) -> int | None:
    """Bytes the device can give: a GPU's total memory, else what the system has available."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device.index or 0).total_memory
    return available_memory()


def forward_memory_problem(generator: nn.Module, side: int, batch: int, device: torch.device | str) -> str | None:
    """Why one forward pass of ``generator`` (any device; a meta copy runs) at ``side`` x ``side``
    cannot fit in the device's memory, or None. The estimate: the weights and every layer's
    output (float32). A pass frees most outputs as it goes, but a U-Net holds its skips to the
    end, so it needs a good part of that; at the sides it is asked about (the padding multiple,
    the training crop) the estimate is far below any machine's memory for a sound file."""
    memory = device_memory(torch.device(device))
    if memory is None:
        return None
    written = [0]

    def record(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            written[0] += output.numel()

    meta = copy.deepcopy(generator).to("meta")
    hooks = [m.register_forward_hook(record) for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty(batch, _input_channels(generator), side, side, device="meta"))
    except Exception:  # a network that cannot run on meta: its pass is the check
        return None
    finally:
        for hook in hooks:
            hook.remove()
    needed = WEIGHT_BYTES * (sum(p.numel() for p in generator.parameters()) + written[0])
    if needed <= memory:
        return None
    return (f"one {side}x{side} pass of the generator takes about {_size(needed)}, more than the "
            f"{_size(memory)} of memory here")


def _input_channels(generator: nn.Module) -> int:
    first = next((m for m in generator.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else CHECK_CHANNELS


def _build_on_meta(g_entry: Entry, g_params: str, d_entry: Entry, d_params: str) -> tuple[nn.Module, nn.Module] | None:
    try:
        with torch.device("meta"):
            generator = g_entry.obj(g_entry.params.model_validate_json(g_params),
                                    in_channels=CHECK_CHANNELS, out_channels=CHECK_CHANNELS)
        # Discriminators are small, and built on meta, spectral normalisation's power iterations
        # take seconds (measured: 20 times the CPU's time): build on the CPU, then drop the memory.
        discriminator = d_entry.obj(d_entry.params.model_validate_json(d_params), in_channels=2 * CHECK_CHANNELS).to("meta")
    except Exception:  # a component that needs real memory to be built is checked by its first step
        return None
    return generator.train(), discriminator.train()


class Misfit(NamedTuple):
    reason: str
    certain: bool  # a wrong output size is; an error may only mean that a network cannot run on meta


@torch.no_grad()
def _dry_run(networks: tuple[nn.Module, nn.Module], g_label: str, d_label: str, side: int, batch: int) -> Misfit | None:
    """Why one training-mode forward pass at ``side`` x ``side`` fails, or None when it fits;
    the labels (``generator unet``) name the networks."""
    generator, discriminator = networks
    image = torch.empty(batch, CHECK_CHANNELS, side, side, device="meta")
    try:
        fake = generator(image)
    except Exception as error:
        return Misfit(f"{g_label} fails ({_first_line(error)})", certain=False)
    if not isinstance(fake, torch.Tensor) or tuple(fake.shape[-2:]) != (side, side):
        shape = "x".join(map(str, fake.shape[-2:])) if isinstance(fake, torch.Tensor) else type(fake).__name__
        return Misfit(f"{g_label} returns {shape} for {side}x{side} inputs", certain=True)
    try:
        discriminator(torch.cat([image, fake], 1))
    except Exception as error:
        return Misfit(f"{d_label} fails ({_first_line(error)})", certain=False)
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160] if text else ''}"
