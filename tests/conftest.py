"""Shared test helpers: tiny recipes that train in a second on two CPU cores."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml

from i2i.engine.callbacks import Callback
from i2i.registry import DISCRIMINATORS, GENERATORS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
MAPS = ROOT.parent / "shared" / "data" / "maps"

torch.set_num_threads(min(2, os.cpu_count() or 1))
# Tests time nothing: the engine takes its static choice (subprocesses inherit this).
os.environ.setdefault("I2I_ENGINE_PROBE", "0")

TINY_SIZE = 32


def example(registry, name: str, plugins: list[str] | None = None) -> dict:
    """The tiny params a component registers as its ``example``, so that any recipe trains a
    few steps at 32x32 in a second."""
    return dict(registry.get(name, plugins).example)


def tiny_recipe(**sections) -> dict:
    """A complete recipe dict (unet + patchgan + gan + l1 on synthetic data) at 32x32."""
    recipe = {
        "name": "tiny",
        "model": {
            "generator": {"name": "unet", "params": example(GENERATORS, "unet", plugins=[])},
            "discriminator": {"name": "patchgan", "params": example(DISCRIMINATORS, "patchgan", plugins=[])},
        },
        "losses": [{"name": "gan", "params": {"mode": "vanilla"}}, {"name": "l1", "weight": 100.0}],
        "data": {
            "dataset": {"name": "synthetic", "params": {"length": 8, "size": 40}},
            "load_size": 36,
            "crop_size": TINY_SIZE,
        },
        # No inference weights (train.eval_bn_batches, off by default, stated here): tiny runs keep the
        # checkpoint layout most tests inspect; tests/test_eval_weights.py tests them.
        "train": {"epochs": 1, "epochs_decay": 1, "device": "cpu", "log_every": 1, "sample_every": 1000,
                  "checkpoint_every": 1000, "eval_bn_batches": 0},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


def shrink(recipe: dict, data_root: Path | None = None) -> dict:
    """A shipped recipe made tiny: small networks, the given data root (see ``fake_data_root``),
    32x32 crops, two steps on the CPU."""
    recipe = copy.deepcopy(recipe)
    for role, registry in (("generator", GENERATORS), ("discriminator", DISCRIMINATORS)):
        spec = recipe["model"][role]
        spec["params"] = {**(spec.get("params") or {}), **example(registry, spec["name"])}
    data = recipe["data"]
    if data_root is not None:
        data["root"] = str(data_root)
    data.update(load_size=36, crop_size=TINY_SIZE, num_workers=0)
    recipe["train"] = {**recipe.get("train", {}), "device": "cpu", "max_steps": 2, "batch_size": 2,
                       "log_every": 1, "compile": False}
    return recipe


def write_fake_photos(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """Smooth random colour images (JPEG-friendly), deterministic per seed."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(1, count + 1):
        small = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size[0], size[1]), Image.BICUBIC)
        path = folder / f"{i}.jpg"
        image.save(path, quality=95)
        paths.append(path)
    return paths


@pytest.fixture
def fake_data_root(tmp_path) -> Path:
    """A data root in the layouts the built-in datasets read: train/ and val/ with
    2:1 A|B images (aligned) that double as plain photos, A/ B/ subfolders, and the
    unpaired trainA/ trainB/ testA/ testB/ (B larger than A, as in horse2zebra)."""
    root = tmp_path / "data"
    for split, count in (("train", 4), ("val", 2)):
        write_fake_photos(root / split, count, (80, 40), seed=1 if split == "train" else 2)
        write_fake_photos(root / split / "A", count, (40, 40), seed=3)
        write_fake_photos(root / split / "B", count, (40, 40), seed=4)
    for split, count in (("train", 3), ("test", 2)):
        write_fake_photos(root / f"{split}A", count, (40, 40), seed=5)
        write_fake_photos(root / f"{split}B", count + 1, (40, 40), seed=6)
    return root


@pytest.fixture
def one_torch_thread():
    """For runs of a few tiny steps: on a busy machine a second thread only adds contention
    (measured 5 to 40 times slower with two threads while other tests ran)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



class RecordLogs(Callback):
    """Keeps every record ``trainer.log`` writes."""

    def __init__(self):
        self.records: list[dict] = []

    def on_log(self, trainer, record):
        self.records.append(record)


@pytest.fixture
def write_recipe(tmp_path):
    def write(recipe: dict, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(recipe, sort_keys=False))
        return path

    return write


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 4-step ``i2i run`` of ``tiny_recipe`` (shared, do not modify): samples at
    steps 2 and 4, report.html, TensorBoard events and a checkpoint."""
    import io

    from rich.console import Console

    from i2i.run import train_from_recipe

    folder = tmp_path_factory.mktemp("tiny_run")
    recipe = folder / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(train={"max_steps": 4, "sample_every": 2})))
    train_from_recipe(recipe, [], folder / "run", False, Console(file=io.StringIO()))
    return folder / "run"
