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

import errno
import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from torch import nn

from i2i.errors import I2IError

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


def _write_durably(path: Path, data: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _discard(path: Path) -> None:
    """Rename out of sight first, so that a kill during the deletion never leaves a
    half-deleted folder that still looks like a checkpoint."""
    trash = path.with_name(f".{path.name}.trash")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _serialise(
    step: int, modules: dict[str, nn.Module], state: dict[str, Any], metadata: dict[str, str]
) -> dict[str, bytes]:
    """Every file of a checkpoint as bytes, the manifest last."""
    files = {f"{name}.safetensors": save_safetensors(_weights(module), metadata) for name, module in modules.items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    files["state.pt"] = buffer.getvalue()
    manifest = {"step": step, "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}}
    files[MANIFEST] = json.dumps(manifest, indent=1).encode()
    return files


def save_checkpoint(
    folder: Path,
    step: int,
    modules: dict[str, nn.Module],
    state: dict[str, Any],
    metadata: dict[str, str],
    keep: int = 3,
) -> Path:
    """Write ``folder/step_N`` atomically and keep only the newest ``keep`` checkpoints.

    The files are serialised in memory first, so writing them can only fail in the
    file system (a full disk above all); any failure leaves the earlier checkpoints as they were.
    """
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".step_*"):  # from a save or a deletion that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    files = _serialise(step, modules, state, metadata)
    final = folder / f"step_{step:08d}"
    tmp = folder / f".{final.name}.tmp"
    try:
        tmp.mkdir()
        for name, data in files.items():
            _write_durably(tmp / name, data)
        _fsync(tmp)
        if final.exists():
            _discard(final)
        os.replace(tmp, final)
        _fsync(folder)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(_write_failure(final, error)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(folder)[:-keep]:
        _discard(old)
    return final


def _write_failure(target: Path, error: OSError) -> str:
    previous = list_checkpoints(target.parent)
    kept = f"the previous checkpoint {previous[-1]} is intact" if previous else "there is no earlier checkpoint"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (
            f"disk full: no space left to write checkpoint {target}; {kept}. "
            f"Free some space (or lower train.keep_checkpoints) and continue with --resume"
        )
    return f"cannot write checkpoint {target}: {error.strerror or error}; {kept}"


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
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        expected = dict(manifest["files"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"checkpoint {path}: unreadable {MANIFEST} ({error})") from None
    for name, digest in expected.items():
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if sha256_file(path / name) != digest:
            raise CheckpointError(f"checkpoint {path}: {name} does not match its sha256 in {MANIFEST}")


def latest_good_checkpoint(run_dir: Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint whose files match their manifest; damaged newer ones are
    reported through ``warn`` and passed over. None when there is no checkpoint at all."""
    found = list_checkpoints(run_dir / "checkpoints")
    problems = []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except CheckpointError as error:
            problems.append(str(error))
            warn(f"passing over a damaged checkpoint: {error}")
            continue
        return path
    if problems:
        raise CheckpointError("no usable checkpoint to resume from:\n  " + "\n  ".join(problems))
    return None


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
