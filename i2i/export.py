"""``i2i export``: a trained generator as an ONNX model or a ``torch.export`` program.

What exports is the generator in a deterministic mode (``i2i.modes``): ``eval``
(BatchNorm with its stored statistics, no dropout) or ``instance`` (each image
normalized by its own statistics: the BatchNorm layers become InstanceNormalization
with the same scale and shift); the export's metadata says which (``mode``). The
pix2pix reference's test-time mode (live dropout) draws at random, so it does not
export; ``i2i translate --mode train`` runs it. Batch, height and width stay dynamic
(height and width must be multiples of the generator's downsampling, as in training). Each export is
checked against the PyTorch generator on a random input before it is kept.
TorchScript is not offered: ``torch.jit`` is deprecated in favour of
``torch.export``.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from i2i.engine.fast_inference import normalize_each_image
from i2i.engine.inference import (
    DIRECTIONS, Direction, finite, generator_role, load_generator, read_generator_metadata, resolve_generator_file,
)
from i2i.engine.limits import MAX_SIDE
from i2i.modes import DEFAULT_MODE
from i2i.recipe import Recipe
from i2i.errors import I2IError
from i2i.run_dir import enclosing_run

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
EXPORTABLE_MODES = ("eval", "instance")  # train mode's dropout draws at random
TOLERANCE = 1e-3  # max abs difference to PyTorch, in [-1, 1] output units, fp32
METADATA_FILE = "i2i_metadata.json"
CHECK_SIZE, CHECK_OUTPUT = "check_size", "check_output"  # metadata: the check input's side, the output's summary


class ExportError(I2IError):
    pass


@dataclass
class Exported:
    path: Path
    max_abs_diff: float


def _dynamic_image_dims() -> tuple[dict[int, object]]:
    dynamic = torch.export.Dim.DYNAMIC
    return ({0: dynamic, 2: dynamic, 3: dynamic},)


def _export_onnx(generator: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    program = torch.onnx.export(
        generator, (example,), dynamo=True, input_names=["input"], output_names=["output"],
        dynamic_shapes=_dynamic_image_dims(), verbose=False,
    )
    program.model.metadata_props.update(metadata)
    program.save(str(path))


def _export_pt2(generator: nn.Module, example: torch.Tensor, path: Path, metadata: dict[str, str]) -> None:
    program = torch.export.export(generator, (example,), dynamic_shapes=_dynamic_image_dims())
    torch.export.save(program, path, extra_files={METADATA_FILE: json.dumps(metadata)})


def _run_pt2(path: Path, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.export.load(path).module()(x).numpy()


def is_previous_export(path: Path) -> bool:
    """An ONNX file or torch.export archive that ``i2i export`` wrote (its recipe in the metadata)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith(f"/{METADATA_FILE}") for name in archive.namelist())
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # onnx raises many types on a file that is no model: it is not one of ours then
        return False
    return any(prop.key == "recipe" for prop in model.metadata_props)


def check_output(output: Path, force: bool) -> None:
    """Never inside a run or a checkpoint, never over a file that is not a previous export, and
    over a previous export only with ``force``."""
    run = enclosing_run(output.parent)
    if run:
        raise ExportError(f"--output {output} is inside the {run}: an export there could replace the run's own files; "
                          f"write it elsewhere")
    if output.is_dir():
        raise ExportError(f"--output {output} is a folder; give a file name")
    if output.exists():
        if not is_previous_export(output):
            raise ExportError(f"--output {output} exists and is not an i2i export; choose another file name")
        if not force:
            raise ExportError(f"--output {output} holds a previous export; pass --force to replace it, or choose another file name")


def export_generator(
    checkpoint: Path, format: str = "onnx", output: Path | None = None, size: int | None = None, force: bool = False,
    direction: Direction = "AtoB", mode: str = DEFAULT_MODE,
) -> Exported:
    """Export the generator of ``checkpoint`` (run dir, checkpoint folder or generator
    .safetensors) in ``mode`` and check it against PyTorch on a ``size`` x ``size`` image.
    ``direction`` BtoA exports the run's other generator (CycleGAN's ``generator_ba``); the
    export's metadata says which. The export is built in a new hidden folder beside ``output``
    and renamed onto it only when it passes; ``force`` replaces a previous export there."""
    if format not in FORMATS:
        raise ExportError(f"--format must be one of {', '.join(FORMATS)}; got {format!r}")
    if mode not in EXPORTABLE_MODES:
        raise ExportError(f"--mode must be one of {', '.join(EXPORTABLE_MODES)} (train mode's dropout is random); got {mode!r}")
    generator, recipe, metadata = load_generator(checkpoint, "cpu", direction=direction)
    generator.eval()
    if mode == "instance":
        normalize_each_image(generator)
    metadata = {**metadata, "mode": mode}
    size = size or recipe.data.crop_size
    name = "generator" if direction == "AtoB" else f"generator_{direction}"
    output = Path(output or f"{recipe.name}_{name}{FORMATS[format]}")
    check_output(output, force)
    output.parent.mkdir(parents=True, exist_ok=True)
    example = check_input(int(metadata["in_channels"]), size)
    with torch.no_grad():
        expected = generator(example)
    if not finite(expected):
        raise ExportError(f"{resolve_generator_file(checkpoint)}: the generator gives NaN or infinite values for the "
                          f"check input: its weights overflow, and it cannot translate anything; nothing exported")
    # What the check compared, so that a loader can run it again and see the graph is the one claimed.
    metadata = {**metadata, CHECK_SIZE: str(size),
                CHECK_OUTPUT: json.dumps({"mode": mode, "direction": direction, "summary": output_summary(expected)})}
    expected = expected.numpy()
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as staging:
        staged = Path(staging) / output.name
        try:
            if format == "onnx":
                _export_onnx(generator, example, staged, metadata)
                produced = OnnxRuntimeGenerator(staged)(example).numpy()
            else:
                _export_pt2(generator, example, staged, metadata)
                produced = _run_pt2(staged, example)
        except I2IError:
            raise
        except Exception as error:  # the exporters raise many types; the message is what matters
            raise ExportError(f"exporting {resolve_generator_file(checkpoint)} as {format} failed: {error}") from error
        diff = float(np.abs(produced - expected).max())
        if not diff < TOLERANCE:
            raise ExportError(f"the {format} export differs from PyTorch by {diff:.2e} (limit {TOLERANCE}); not kept")
        os.replace(staged, output)
    return Exported(output, diff)


def check_input(channels: int, size: int) -> torch.Tensor:
    """The export's check image, the same every time: batch 2 (torch.export specialises a
    dimension that is 1 in the example), uniform in [-1, 1] from seed 0."""
    return torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


def output_summary(y: torch.Tensor) -> list[float]:
    """Per output channel, the mean and the mean absolute value over the check input's outputs:
    a few numbers that tell the generator modes (and directions) apart."""
    y = y.float()
    return [round(float(v), 6) for v in (*y.mean(dim=(0, 2, 3)), *y.abs().mean(dim=(0, 2, 3)))]


def check_claimed_graph(generator: OnnxRuntimeGenerator, path: Path, warn: Callable[[str], None]) -> None:
    """The .onnx file's graph against what its export compared: a graph of another mode than its
    metadata names gives other numbers. An export from before the check was recorded is trusted,
    and ``warn`` says so."""
    meta = generator.metadata
    mode = meta.get("mode", "eval")
    if CHECK_SIZE not in meta or CHECK_OUTPUT not in meta:
        warn(f"{path} records no check of its graph (exported by an older i2i): its own claim (mode {mode}) is trusted")
        return
    try:
        size, check = int(meta[CHECK_SIZE]), json.loads(meta[CHECK_OUTPUT])
        checked_mode, recorded = str(check["mode"]), [float(v) for v in check["summary"]]
    except (ValueError, TypeError, KeyError):
        raise ExportError(f"{path}: its recorded check ({CHECK_SIZE}, {CHECK_OUTPUT}) is not readable; the file was "
                          f"altered") from None
    if not 1 <= size <= MAX_SIDE:
        raise ExportError(f"{path}: its recorded check size {size} is outside 1..{MAX_SIDE}; the file was altered")
    if checked_mode != mode:
        raise ExportError(f"{path}: its metadata names mode {mode}, but its export checked the {checked_mode}-mode "
                          f"generator; the file was altered. Export it again with `i2i export --mode {mode}`")
    channels = generator.session.get_inputs()[0].shape[1]
    channels = channels if isinstance(channels, int) else int(meta.get("in_channels", 3))
    produced = output_summary(generator(check_input(channels, size)))
    if len(produced) != len(recorded) or max(abs(a - b) for a, b in zip(produced, recorded)) >= TOLERANCE:
        raise ExportError(f"{path}: its graph does not give the output its export recorded for the check input: it "
                          f"is not the {mode}-mode generator its metadata names (the file was altered, or its "
                          f"metadata copied from another export); export it again with `i2i export --mode {mode}`")


class OnnxRuntimeGenerator(nn.Module):
    """An exported ONNX generator behind the module interface ``i2i translate`` calls
    (no parameters; train/eval switch nothing: the export's mode is fixed, in its metadata)."""

    def __init__(self, path: Path):
        super().__init__()
        import onnxruntime

        available = onnxruntime.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime's errors share no base class; its message says what is wrong
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise ExportError(f"{path} is not an ONNX model onnxruntime can run ({detail}); export one with `i2i export`") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != ["input"] or len(inputs[0].shape) != 4 or len(outputs) != 1:
            raise ExportError(f"{path} is not an i2i generator export: it must take one 4-d 'input' and give one output; "
                              f"export one with `i2i export`")
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (y,) = self.session.run(None, {"input": x.detach().float().cpu().numpy()})
        return torch.from_numpy(y).to(x.device)


def onnxruntime_generator(
    checkpoint: Path, mode: str, direction: Direction = "AtoB", warn: Callable[[str], None] = warnings.warn
) -> tuple[OnnxRuntimeGenerator, Recipe, dict[str, str]]:
    """For ``i2i translate --backend onnxruntime``: an .onnx file from ``i2i export`` as is,
    anything else exported first (into a temporary folder), in ``direction``. An .onnx file holds
    one generator: ``direction`` BtoA needs the export of the run's B -> A generator."""
    if mode not in EXPORTABLE_MODES:
        raise ExportError(f"--backend onnxruntime runs an exported generator, in mode {' or '.join(EXPORTABLE_MODES)}; "
                          f"not {mode}")
    checkpoint = Path(checkpoint)
    if checkpoint.suffix == ".onnx":
        generator = OnnxRuntimeGenerator(checkpoint)
    else:  # the session holds the model in memory: the exported file is not needed after it is built
        with tempfile.TemporaryDirectory(prefix="i2i-onnx-") as folder:
            exported = export_generator(checkpoint, "onnx", Path(folder) / "generator.onnx", mode=mode, direction=direction)
            generator = OnnxRuntimeGenerator(exported.path)
    if "recipe" not in generator.metadata:
        raise ExportError(f"{checkpoint} has no recipe in its metadata; export it with `i2i export`")
    exported_mode = generator.metadata.get("mode", "eval")  # exports from before the modes were all eval
    if exported_mode != mode:
        raise ExportError(f"{checkpoint} was exported in {exported_mode} mode, not {mode}: pass --mode {exported_mode}, "
                          f"or export it again with `i2i export --mode {mode}`")
    recipe, metadata = read_generator_metadata(dict(generator.metadata), checkpoint)
    if checkpoint.suffix == ".onnx":  # an export made just now was checked against PyTorch already
        check_claimed_graph(generator, checkpoint, warn)
    metadata = {**metadata, "direction": export_direction(recipe, metadata, checkpoint)}
    if direction == "BtoA" and metadata["direction"] == "AtoB":
        raise ExportError(f"{checkpoint} is an export of the A -> B generator; for --direction BtoA export the run's "
                          f"other generator (`i2i export --direction BtoA`) and translate with that file")
    check_graph_channels(generator, metadata, checkpoint)
    return generator, recipe, metadata


def export_direction(recipe: Recipe, metadata: dict[str, str], source: Path) -> Direction:
    """The direction of the generator an export holds: its ``network`` metadata says which of the
    run's generators it is, and a ``direction`` it states must agree (exports from before it was
    stated hold the A -> B generator unless ``network`` names the other)."""
    held = generator_role(recipe, metadata)[3]
    stated = metadata.get("direction", held)
    if stated not in DIRECTIONS or stated != held:
        raise ExportError(f"{source}: metadata direction {str(stated)[:40]!r} does not match the network it names "
                          f"({metadata.get('network', 'generator')}, {held}); the file was altered")
    return held


def check_graph_channels(generator: OnnxRuntimeGenerator, metadata: dict[str, str], source: Path) -> None:
    """The channel counts the metadata states against the graph's input and output, where the
    graph fixes them (``i2i export`` keeps only batch, height and width dynamic)."""
    for key, ports in (("in_channels", generator.session.get_inputs()), ("out_channels", generator.session.get_outputs())):
        shape = ports[0].shape
        graph = shape[1] if len(shape) == 4 else None
        if isinstance(graph, int) and graph != int(metadata[key]):
            raise ExportError(f"{source}: metadata {key} {metadata[key]} does not match its graph, which has {graph} "
                              f"channels there; the file was altered")
