"""Generators saved by the PyTorch pix2pix/CycleGAN reference implementation, as i2i checkpoints.

**U-Net** (``unet_256``: 8 levels, ``unet_128``: 7). The reference nests one skip
block per level, each keeping its layers in a ``model`` Sequential:

    outermost  [down conv, <level 1>, ReLU, up conv (with bias), Tanh]
    middle     [LeakyReLU, down conv, norm, <next level>, ReLU, up conv, norm (, Dropout)]
    innermost  [LeakyReLU, down conv, ReLU, up conv, norm]

so level k's layers sit under ``model.model.`` (k = 0), ``model.model.1.model.``
(k = 1), and one ``3.model.`` more for each further level. i2i's U-Net keeps the
same layers per level in ``down.k`` (LeakyReLU, conv, norm) and ``up.k`` (ReLU,
transposed conv, norm, dropout), which gives the key mapping:

    i2i                       reference, inside level k's Sequential
    down.0.weight             0.weight             outermost down conv
    down.k.1.* / down.k.2.*   1.* / 2.*            down conv / its norm
    up.0.1.*                  3.*                  outermost up conv
    up.k.1.* / up.k.2.*       5.* / 6.*            up conv / its norm (innermost: 3.* / 4.*)

**ResNet** (``resnet_9blocks``, ``resnet_6blocks``: CycleGAN's generators). Both
keep the layers in one ``model`` Sequential in the same order, so only the
residual blocks' inner Sequential is named differently:

    i2i                       reference
    model.N.*                 model.N.*            every layer outside the blocks
    model.N.block.M.*         model.N.conv_block.M.*

Every i2i tensor must find its reference tensor with the same shape and every
reference tensor must be used; BatchNorm's ``num_batches_tracked``, which older
PyTorch versions did not save, is the only tensor that may be absent. InstanceNorm
layers keep no statistics, but PyTorch before 0.4 saved ``running_mean`` and
``running_var`` for them; those are dropped where i2i has an InstanceNorm, as the
reference drops them when it loads such a file.

**CUT's ResNet** (taesungp/contrastive-unpaired-translation, ``resnet_9blocks`` with its
default anti-aliasing; i2i's ``resnet`` with ``antialias: true``). The same ``model``
Sequential as CycleGAN's, layer for layer, with each stride-2 conv split into a stride-1
conv and a ``Downsample`` and each transposed conv into an ``Upsample`` and a stride-1 conv.
Those two keep their fixed filter as a saved buffer, ``filt``; i2i's ``BlurDown`` and
``BlurUp`` sit at the same places and do not save theirs. For 9 blocks:

    i2i                       reference
    model.N.*                 model.N.*            every conv (1, 4, 8, 22, 26, 30)
    model.N.block.M.*         model.N.conv_block.M.*   the blocks (12 .. 20)
    model.7, model.11         model.7.filt, model.11.filt     (C, 1, 3, 3): [1, 2, 1] outer product / 16
    model.21, model.25        model.21.filt, model.25.filt    (C, 1, 4, 4): [1, 3, 3, 1] outer product / 16

Each ``filt`` must be present where i2i has a blur, with that shape and those values, and
nowhere else; it is checked and dropped. A file that does not fit is refused in one line
naming the first tensor, in the network's order, that is missing, has another shape or is
left over (a ResNet-6 file under a ResNet-9 recipe: the first block the file lacks).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import zipfile
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from i2i.version import __version__
from i2i.engine.build import build_generator
from i2i.engine.checkpoint import MANIFEST, first_nonfinite, weights_with_checksum
from i2i.engine.inference import GENERATOR_FILE
from i2i.errors import I2IError
from i2i.models.resnet import BlurDown, BlurUp, ResnetGenerator
from i2i.recipe import Recipe
from i2i.safe_files import write_file


class WeightsError(I2IError):
    pass


# -- reading -------------------------------------------------------------------------
def refuse_inflating(file: Path) -> None:
    """torch.save stores the entries of its zip file uncompressed: a zip whose entries would
    inflate beyond the file's own size is refused from its headers, before anything inflates
    (a zip bomb). Files of the older, non-zip format cannot inflate."""
    try:
        with zipfile.ZipFile(file) as archive:
            inflated = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError):
        return  # not a zip: torch.load says what it is
    size = Path(file).stat().st_size
    if inflated > size:
        raise WeightsError(
            f"refusing to load {file}: its zip entries would inflate from {size:,} to {inflated:,} bytes, and "
            f"torch.save stores them uncompressed; save a plain state dict: torch.save(net.state_dict(), path)"
        )


def read_reference_weights(file: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``file``, loaded without running code from it; a leading
    ``module.`` (saved from DataParallel) is dropped."""
    refuse_inflating(file)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{file} does not exist") from None
    except pickle.UnpicklingError as error:
        detail = next((line for line in str(error).splitlines() if "GLOBAL" in line), None)
        if detail is not None:
            raise WeightsError(
                f"refusing to load {file}: it holds objects other than tensors (loading it would run code "
                f"from the file: {detail.strip()}). Save a plain state dict: torch.save(net.state_dict(), path)"
            ) from None
        raise WeightsError(f"{file} is not a PyTorch weights file or is damaged; download or copy it again") from None
    except Exception as error:  # a damaged file fails anywhere in torch's readers, with any exception type
        raise WeightsError(
            f"cannot read {file} ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unexpected end'}); "
            f"the file is truncated or damaged: download or copy it again"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        found = ", ".join(sorted(map(str, state))[:5]) if isinstance(state, dict) else type(state).__name__
        raise WeightsError(f"{file} is not a plain state dict of tensors (found {found}); save net.state_dict()")
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


# -- the key mapping -----------------------------------------------------------------
def level_prefix(level: int) -> str:
    """Where the reference keeps level ``level``'s layers (level 0 is the outermost)."""
    return "model.model." + "".join("1.model." if k == 1 else "3.model." for k in range(1, level + 1))


def reference_key(key: str, num_downs: int) -> str:
    """The reference's name for the i2i U-Net tensor ``key`` (``down.3.2.running_mean``)."""
    side, level_text, *rest = key.split(".")
    level = int(level_text)
    if side == "down" and level == 0:  # a bare conv, not a Sequential
        return level_prefix(0) + "0." + ".".join(rest)
    layer, *tensor = rest
    # The up layers follow the down layers and the nested level in the reference's Sequential.
    offset = 0 if side == "down" else 2 if level in (0, num_downs - 1) else 4
    return level_prefix(level) + f"{int(layer) + offset}." + ".".join(tensor)


def resnet_key(key: str) -> str:
    """The reference's name for the i2i ResNet tensor ``key`` (``model.10.block.1.weight``)."""
    return key.replace(".block.", ".conv_block.", 1)


def layout_of(generator: nn.Module) -> tuple[str, Callable[[str], str]]:
    """The reference layout's name and its key mapping for ``generator``."""
    if isinstance(generator, ResnetGenerator):
        return "ResNet", resnet_key
    return "U-Net", partial(reference_key, num_downs=len(generator.down))


def instance_norm_statistics(generator: nn.Module, reference_name: Callable[[str], str]) -> set[str]:
    """The reference names of what old saves hold for ``generator``'s InstanceNorm layers."""
    return {
        reference_name(f"{name}.{statistic}")
        for name, layer in generator.named_modules()
        if isinstance(layer, nn.InstanceNorm2d) and not layer.track_running_stats
        for statistic in ("running_mean", "running_var", "num_batches_tracked")
    }


def convert(state: dict[str, torch.Tensor], generator: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """i2i's state dict for ``generator`` filled from the reference's ``state``; one error
    counts the tensors that are missing, have another shape or are left over, and names them."""
    layout, reference_name = layout_of(generator)
    stale = instance_norm_statistics(generator, reference_name)
    state = {name: tensor for name, tensor in state.items() if name not in stale}
    converted: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing, reshaped = [], []
    for key, tensor in generator.state_dict().items():
        name = reference_name(key)
        if name not in state:
            if key.endswith("num_batches_tracked"):
                converted[key] = torch.zeros(tensor.shape, dtype=tensor.dtype, device="cpu")
            else:
                missing.append(f"missing {name} {tuple(tensor.shape)} (i2i {key})")
            continue
        used.add(name)
        if state[name].shape != tensor.shape:
            reshaped.append(f"shape of {name}: file {tuple(state[name].shape)}, expected {tuple(tensor.shape)} (i2i {key})")
            continue
        if state[name].is_floating_point() != tensor.is_floating_point():
            raise WeightsError(f"{source}: tensor {name} is {state[name].dtype}; the {layout} needs {tensor.dtype} there (i2i {key})")
        converted[key] = state[name].to(tensor.dtype).contiguous()
    left_over = [f"unexpected {name} {tuple(state[name].shape)}" for name in sorted(set(state) - used)]
    groups = {"missing": missing, "with another shape": reshaped, "left over": left_over}
    if missing or reshaped or left_over:
        counts = ", ".join(f"{len(lines)} {kind}" for kind, lines in groups.items() if lines)
        shown = [
            line
            for kind, lines in groups.items()
            for line in lines[:8] + ([f"... and {len(lines) - 8} more {kind}"] if len(lines) > 8 else [])
        ]
        raise WeightsError(
            f"{source} does not fit the reference {layout} layout of the recipe's generator ({counts} tensors):\n  "
            + "\n  ".join(shown)
        )
    return converted


def reference_norm(state: dict[str, torch.Tensor], generator: nn.Module) -> str:
    """The normalization the reference trained ``state`` with. BatchNorm keeps a scale beside its
    statistics; InstanceNorm keeps nothing, but the reference gives its convolutions a bias only
    under InstanceNorm (``use_bias``), so the first convolution's bias tells it from no norm."""
    if any(key.endswith(".running_mean") and key.removesuffix("running_mean") + "weight" in state for key in state):
        return "batch"
    first = "model.1.bias" if isinstance(generator, ResnetGenerator) else level_prefix(1) + "1.bias"
    return "instance" if first in state else "none"


def channels_of(state: dict[str, torch.Tensor], generator: str) -> tuple[int, int]:
    """(in, out) channels from the outermost convolutions of a ``unet`` or ``resnet``; RGB where
    they are absent (the mapping then lists what is missing)."""
    if generator == "resnet":  # model.1 is the first conv, the output conv the last layer with weights
        top_level = {int(parts[1]): tensor for key, tensor in state.items()
                     if len(parts := key.split(".")) == 3 and parts[0] == "model" and parts[1].isdigit() and parts[2] == "weight"}
        down, up = top_level.get(1), top_level.get(max(top_level, default=-1))
        up_out_axis = 0  # Conv2d: (out, in, kh, kw)
    else:
        down, up = state.get(level_prefix(0) + "0.weight"), state.get(level_prefix(0) + "3.weight")
        up_out_axis = 1  # ConvTranspose2d: (in, out, kh, kw)
    in_channels = down.shape[1] if down is not None and down.dim() == 4 else 3
    out_channels = up.shape[up_out_axis] if up is not None and up.dim() == 4 else 3
    return in_channels, out_channels


# -- CUT's anti-aliased ResNet -----------------------------------------------------------
BLUR_BUFFER = "filt"  # the name CUT's Downsample and Upsample save their filter under


def is_cut_resnet(generator: nn.Module) -> bool:
    return isinstance(generator, ResnetGenerator) and any(isinstance(m, (BlurDown, BlurUp)) for m in generator.model)


def _layer_index(name: str) -> int:
    """Which layer of the ``model`` Sequential a reference tensor belongs to (last: none)."""
    parts = name.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 1 << 30


def convert_cut(state: dict[str, torch.Tensor], generator: ResnetGenerator, source: str) -> dict[str, torch.Tensor]:
    """i2i's state dict for the anti-aliased ``generator`` from CUT's ``state``: the ResNet
    mapping plus each blur's saved filter checked against i2i's constant. One line on a misfit."""
    stale = instance_norm_statistics(generator, resnet_key)
    state = {name: tensor for name, tensor in state.items() if name not in stale}
    expected = {resnet_key(key): tensor for key, tensor in generator.state_dict().items()}
    for index, layer in enumerate(generator.model):
        if isinstance(layer, (BlurDown, BlurUp)):
            expected[f"model.{index}.{BLUR_BUFFER}"] = layer.kernel
    mismatches = [(name, f"missing {name} {tuple(tensor.shape)}") for name, tensor in expected.items() if name not in state]
    mismatches += [(name, f"{name} has shape {tuple(state[name].shape)}, expected {tuple(tensor.shape)}")
                   for name, tensor in expected.items() if name in state and state[name].shape != tensor.shape]
    mismatches += [(name, f"unexpected {name} {tuple(state[name].shape)}") for name in state if name not in expected]
    if mismatches:
        # The network's order: by layer, then the generator's own tensor order, then the file's.
        order = {name: i for i, name in enumerate(expected)}
        for name in state:
            order.setdefault(name, len(order))
        first = min(mismatches, key=lambda item: (_layer_index(item[0]), order[item[0]]))[1]
        others = f" ({len(mismatches) - 1} more mismatched tensors)" if len(mismatches) > 1 else ""
        raise WeightsError(f"{source} does not fit the CUT ResNet of the recipe's generator: {first}{others}")
    for name, kernel in expected.items():
        if name.endswith(f".{BLUR_BUFFER}") and not torch.allclose(state[name].float(), kernel.float(), atol=1e-6):
            raise WeightsError(f"{source}: {name} is not CUT's fixed binomial blur (another filter: another network)")
    keys = generator.state_dict()
    converted = {}
    for key, tensor in keys.items():
        saved = state[resnet_key(key)]
        if saved.is_floating_point() != tensor.is_floating_point():
            raise WeightsError(f"{source}: tensor {resnet_key(key)} is {saved.dtype}; the CUT ResNet needs {tensor.dtype} there")
        converted[key] = saved.to(tensor.dtype).contiguous()
    return converted


# -- writing -------------------------------------------------------------------------
def write_generator(folder: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """``folder/generator.safetensors`` (with its own checksum, as training checkpoints) and
    then its manifest, each renamed into place when complete."""
    weights = weights_with_checksum(tensors, metadata)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST).unlink(missing_ok=True)  # a manifest never vouches for other weights, even briefly
        write_file(folder / GENERATOR_FILE, weights, durable=True)
        manifest = {"files": {GENERATOR_FILE: hashlib.sha256(weights).hexdigest()}}
        write_file(folder / MANIFEST, json.dumps(manifest, indent=1), durable=True)
    except OSError as error:
        raise WeightsError(f"cannot write {folder / GENERATOR_FILE}: {error.strerror or error}") from None


def import_reference_weights(file: Path, recipe: Recipe, output: Path) -> Path:
    """Convert the reference generator in ``file`` into the i2i checkpoint folder ``output``
    (the recipe in the weights' metadata, so ``i2i translate --checkpoint output`` runs it)."""
    spec = recipe.model.generator
    if spec.name not in ("unet", "resnet"):
        raise WeightsError(
            f"recipe {recipe.name} uses generator {spec.name!r}; importing reference weights needs a recipe "
            f"with the U-Net (generator 'unet', as pix2pix_maps) or the ResNet ('resnet', as maps_resnet9_multiscale)"
        )
    state = read_reference_weights(file)
    in_channels, out_channels = channels_of(state, spec.name)
    generator = build_generator(recipe, in_channels, out_channels)
    tensors = (convert_cut if is_cut_resnet(generator) else convert)(state, generator, str(file))
    # InstanceNorm keeps no tensors and i2i's convolutions keep their bias without a norm: the layouts
    # match, the outputs do not (off by about 1.0)
    trained, recipe_norm = reference_norm(state, generator), spec.params.norm
    if trained != recipe_norm:
        raise WeightsError(f"{file} was trained with {trained} normalization, and recipe {recipe.name}'s generator has "
                           f"norm {recipe_norm}; use a recipe with model.generator.params.norm: {trained}")
    bad = first_nonfinite(tensors)
    if bad is not None:
        raise WeightsError(f"{file}: tensor {layout_of(generator)[1](bad)} (i2i {bad}) holds NaN or infinite "
                           f"values; these weights cannot translate anything")
    metadata = {
        "recipe": recipe.to_yaml(),
        "in_channels": str(in_channels),
        "out_channels": str(out_channels),
        "size_multiple": str(generator.size_multiple),
        "i2i_version": __version__,
        "imported_from": Path(file).name,
    }
    write_generator(output, tensors, metadata)
    return output
