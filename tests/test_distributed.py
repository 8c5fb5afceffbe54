"""Two CPU processes (gloo) with batch b train the same weights as one process with batch 2b."""

import subprocess
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from i2i.engine.checkpoint import latest_checkpoint
from i2i.engine.distributed import without_option
from i2i.engine.trainer import Trainer
from i2i.recipe import validate_recipe

from conftest import ROOT, tiny_recipe


def without_batchnorm(batch_size: int) -> dict:
    """No BatchNorm and no dropout: the per-process batches then add up to the global one exactly."""
    recipe = tiny_recipe(train={"batch_size": batch_size, "epochs": 1, "epochs_decay": 0, "tensorboard": False})
    for role in ("generator", "discriminator"):
        recipe["model"][role]["params"]["norm"] = "none"
    recipe["model"]["generator"]["params"]["dropout"] = 0.0
    return recipe


def test_two_processes_match_one_with_twice_the_batch(tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(without_batchnorm(batch_size=2)))
    command = [sys.executable, "-m", "i2i", "run", str(recipe_file), "--nproc", "2", "--out", str(tmp_path / "ddp"), "--quiet"]
    subprocess.run(command, check=True, cwd=ROOT, timeout=600)

    init = Trainer(validate_recipe(without_batchnorm(batch_size=4)), run_dir=tmp_path / "init").generator.state_dict()
    single = Trainer(validate_recipe(without_batchnorm(batch_size=4)), run_dir=tmp_path / "single")
    single.fit()
    checkpoint = latest_checkpoint(tmp_path / "ddp")
    assert int(checkpoint.name.removeprefix("step_")) == single.step == 2
    distributed = load_file(checkpoint / "generator.safetensors")
    for name, weight in single.generator.state_dict().items():
        moved = (weight - init[name]).abs().max()
        assert moved > 1e-5, f"{name} did not train"
        assert (distributed[name] - weight).abs().max() < 1e-3 * moved, name


def test_launch_drops_the_nproc_option_for_the_ranks():
    args = ["run", "r.yaml", "--nproc", "2", "--set", "train.lr=1", "--nproc=3", "--out", "x"]
    assert without_option(args, "--nproc") == ["run", "r.yaml", "--set", "train.lr=1", "--out", "x"]


def test_resume_maps_steps_across_world_sizes(tmp_path):
    trainer = Trainer(validate_recipe(without_batchnorm(batch_size=2)), run_dir=tmp_path, rank=0, world_size=1)
    # 8 pairs, batch 2: 4 steps per epoch alone, 2 per epoch in each of 2 processes.
    assert trainer.step_for_world_size(5, saved_world_size=2) == 2 * 4 + 2
    assert trainer.step_for_world_size(5, saved_world_size=1) == 5
