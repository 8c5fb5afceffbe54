"""The training step learns, the schedule is the published one, and the CLI writes a run."""

import json

import pytest
import torch
from typer.testing import CliRunner

from i2i.cli import app
from i2i.engine.schedule import EpochSampler, linear_decay
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import MAPS, RecordLogs, tiny_recipe


def test_overfits_one_pair(tmp_path):
    """~100 steps on a single pair drive the L1 term down clearly."""
    recipe = Recipe.from_dict(tiny_recipe(
        data={"dataset": {"name": "synthetic", "params": {"length": 1, "size": 32}}, "load_size": 32, "flip": False},
        train={"max_steps": 120, "log_every": 20, "epochs": 200, "epochs_decay": 0, "lr": 1e-3},
    ))
    trainer = Trainer(recipe, run_dir=tmp_path)
    trainer.fit()
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    first, last = log[0]["G_l1"], log[-1]["G_l1"]
    assert last < 0.5 * first, (first, last)


def test_linear_decay_matches_reference():
    # 100 + 100 epochs: lr factor 1 up to epoch 99, then 1 - k/101.
    assert linear_decay(0, 100, 100) == 1.0 and linear_decay(98, 100, 100) == 1.0
    assert linear_decay(99, 100, 100) == pytest.approx(1 - 0 / 101)
    assert linear_decay(100, 100, 100) == pytest.approx(1 - 1 / 101)
    assert linear_decay(199, 100, 100) == pytest.approx(1 - 100 / 101)


def test_lr_follows_the_schedule_across_epochs(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(train={"epochs": 1, "epochs_decay": 2, "lr": 1.0, "batch_size": 8}))
    trainer = Trainer(recipe, run_dir=tmp_path)
    logs = RecordLogs()
    trainer.callbacks.append(logs)
    trainer.fit()
    assert [record["lr"] for record in logs.records] == pytest.approx([1.0, 1 - 1 / 3, 1 - 2 / 3])


def test_epoch_sampler_is_a_permutation_per_epoch_and_resumable():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert sorted(first) == list(range(10)) and list(sampler) != first
    sampler.set_epoch(0, start=4)
    assert list(sampler) == first[4:]
    shards = [EpochSampler(10, seed=3, rank=r, world_size=3) for r in range(3)]
    covered = set()
    for shard in shards:
        covered |= set(shard)
    assert covered == set(range(10)) and all(len(s) == 4 for s in shards)


def test_discriminator_sees_condition_and_target(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(
        data={"dataset": {"name": "synthetic", "params": {"length": 2, "size": 40, "in_channels": 1}}}
    ))
    trainer = Trainer(recipe, run_dir=tmp_path)
    first_conv = next(m for m in trainer.discriminator.modules() if isinstance(m, torch.nn.Conv2d))
    assert (trainer.in_channels, trainer.out_channels, first_conv.in_channels) == (1, 3, 4)


def test_cli_run_writes_checkpoint_samples_and_log(write_recipe, tmp_path):
    path = write_recipe(tiny_recipe(train={"max_steps": 3, "sample_every": 2}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--set", "train.seed=1"])
    assert result.exit_code == 0, result.output
    assert (out / "recipe.yaml").is_file() and (out / "log.jsonl").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir())[:2] == ["step_00000002.png", "step_00000003.png"]
    checkpoint = out / "checkpoints" / "step_00000003"
    assert {p.name for p in checkpoint.iterdir()} >= {"generator.safetensors", "discriminator.safetensors", "state.pt", "manifest.json"}

    translated = tmp_path / "translated"
    result = CliRunner().invoke(app, ["translate", "--checkpoint", str(out), "--input", str(out / "samples"), "--output", str(translated)])
    assert result.exit_code == 0, result.output
    assert len(list(translated.iterdir())) == 2


def test_cli_validate_json(write_recipe):
    result = CliRunner().invoke(app, ["validate", str(write_recipe(tiny_recipe())), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["generator"]["name"] == "unet" and report["generator"]["parameters"] > 0
    assert report["recipe"]["data"]["direction"] == "AtoB"


@pytest.mark.skipif(not (MAPS / "train").is_dir(), reason="the maps set is not at ../shared/data/maps")
def test_real_maps_smoke(tmp_path):
    """Two steps of the flagship layout on the real maps set (small U-Net, 64x64 crops)."""
    recipe = Recipe.from_dict(tiny_recipe(
        data={"dataset": {"name": "aligned"}, "root": str(MAPS), "direction": "BtoA", "load_size": 72, "crop_size": 64},
        train={"max_steps": 2},
        model={"generator": {"name": "unet", "params": {"num_downs": 6, "ngf": 8}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 8}}},
    ))
    trainer = Trainer(recipe, run_dir=tmp_path)
    # Every pair of train/ (a count the set's version decides), each one image file.
    assert len(trainer.dataset) == len([p for p in (MAPS / "train").iterdir() if p.suffix.lower() in (".jpg", ".png")]) > 0
    item = trainer.dataset[0]
    assert item["input"].shape == (3, 64, 64) and -1 <= item["input"].min() and item["input"].max() <= 1
    trainer.fit()
    assert trainer.step == 2


def test_sample_grids_leave_the_run_as_it_was(tmp_path):
    """Samples are drawn as the reference tests (train mode, dropout): neither the
    generator's state (running statistics and their counter) nor the training RNG may move,
    and the same weights give the same grid."""
    recipe = tiny_recipe(data={"dataset": {"name": "synthetic", "params": {"length": 4, "size": 64}},
                               "load_size": 64, "crop_size": 64})
    recipe["model"]["generator"]["params"].update(num_downs=6, dropout=0.5)  # one 8*ngf block: dropout
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path)
    trainer._sample_batch = trainer.sample_inputs()  # what fit() sets up
    state = {key: value.clone() for key, value in trainer.generator.state_dict().items()}
    rng = torch.get_rng_state()
    first = trainer.save_samples().read_bytes()
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in trainer.generator.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert trainer.generator.training
    assert trainer.save_samples().read_bytes() == first
