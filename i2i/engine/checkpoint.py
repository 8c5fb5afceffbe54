"""Checkpoints: weights in safetensors, training state in a weights-only torch file.

    run_dir/checkpoints/step_00001200/
        generator.safetensors      # carries the recipe and channel counts as metadata
        discriminator.safetensors
        state.pt                   # optimizers, step, RNG (loaded with weights_only=True)
        manifest.json              # written last: sha256 of each file

A checkpoint is written into a hidden temporary folder, every file fsynced, and
then renamed into place, so a crash never leaves a half-written checkpoint
where resume would look for one.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from i2i.registry import I2IError

MANIFEST = "manifest.json"


class CheckpointError(I2IError):
    pass


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def save_checkpoint(
    folder: Path,
    step: int,
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    metadata: dict[str, str],
    keep: int = 3,
) -> Path:
    """Write ``folder/step_N`` atomically and keep only the newest ``keep`` checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step_{step:08d}"
    tmp = folder / f".step_{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        for name, module in modules.items():
            save_file(_weights(module), tmp / f"{name}.safetensors", metadata=metadata)
        torch.save(state, tmp / "state.pt")
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"step": step, "files": {name: sha256_file(tmp / name) for name in files}}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        for name in [*files, MANIFEST]:
            _fsync(tmp / name)
        _fsync(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (those with a manifest), oldest first."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("step_*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir / "checkpoints")
    return found[-1] if found else None


def verify_checkpoint(path: Path) -> None:
    manifest = json.loads((path / MANIFEST).read_text())
    for name, digest in manifest["files"].items():
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if sha256_file(path / name) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its sha256 in {MANIFEST}")


def load_weights(module: nn.Module, file: Path) -> None:
    """Load a safetensors file into ``module``, listing every mismatched tensor on failure."""
    try:
        tensors = load_file(file)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read weights {file}: {error}") from None
    expected = module.state_dict()
    problems = [f"missing {k} {tuple(v.shape)}" for k, v in expected.items() if k not in tensors]
    problems += [f"unexpected {k} {tuple(v.shape)}" for k, v in tensors.items() if k not in expected]
    problems += [
        f"shape of {k}: checkpoint {tuple(tensors[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{file} does not fit the model built from the recipe:\n  {shown}")
    module.load_state_dict(tensors)


def read_metadata(file: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(file, "pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot read weights {file}: {error}") from None


def load_state(path: Path) -> dict[str, Any]:
    """Training state, never unpickling code: a file that needs it is refused."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it holds objects other than tensors and plain data "
            f"(loading it would run code from the file). Detail: {str(error).splitlines()[0]}"
        ) from None
    except (OSError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"cannot read training state {path}: {error}") from None
