"""Unpaired methods (CycleGAN, CUT, FastCUT) train on trainA/trainB folders and resume exactly."""

from __future__ import annotations

import re

import pytest
import torch

from conftest import tiny_recipe
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, RecipeError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

METHODS = {
    "cyclegan": {"name": "cyclegan", "params": {"pool_size": 2}},  # full after two steps: draws from it after
    "cut": {"name": "cut", "params": {"nce_layers": [0, 4, 8, 12], "num_patches": 16, "head_channels": 8}},
    "fastcut": {"name": "cut", "params": {"mode": "fastcut", "nce_layers": [0, 4, 8], "num_patches": 16,
                                          "head_channels": 8}},
}


def unpaired_recipe(method: str, root, **train) -> dict:
    return tiny_recipe(
        method=METHODS[method],
        model={"generator": {"name": "resnet", "params": {"ngf": 4, "n_blocks": 2, "antialias": method != "cyclegan"}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}}},
        losses=[{"name": "gan", "params": {"mode": "lsgan"}}],
        # CUT's published loader: resize to the crop size, no crop, once the learning rate decays.
        data={"dataset": {"name": "unaligned"}, "root": str(root), "decay_load_size": None if method == "cyclegan" else 32},
        train={"checkpoint_every": 1000, "tensorboard": False, **train},
    )


def train(method: str, root, run_dir, max_steps: int, resume: bool = False) -> Trainer:
    trainer = Trainer(Recipe.from_dict(unpaired_recipe(method, root, max_steps=max_steps)), run_dir=run_dir)
    trainer.fit(resume=resume)
    return trainer


@pytest.mark.parametrize("method, split", [("cyclegan", 3), ("cut", 3), ("cut", 5), ("fastcut", 3)])
def test_resume_midway_equals_a_straight_run(method, split, fake_data_root, tmp_path):
    # 4 samples a epoch (max of 3 A and 4 B): the learning rate decays from step 4 on, and CUT's
    # data switches to decay_load_size there; resumed before the switch (3) and after it (5).
    straight = train(method, fake_data_root, tmp_path / "straight", 6)
    train(method, fake_data_root, tmp_path / "split", split)
    resumed = train(method, fake_data_root, tmp_path / "split", 6, resume=True)
    assert resumed.step == 6
    assert straight.networks.keys() == resumed.networks.keys()
    for name in straight.networks:
        a, b = straight.networks[name].state_dict(), resumed.networks[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
    for name in ("opt_g", "opt_d"):
        a, b = getattr(straight, name).state_dict()["state"], getattr(resumed, name).state_dict()["state"]
        assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    for key, images in straight.method.state_dict().items():  # CycleGAN's pools
        assert all(torch.equal(x, y) for x, y in zip(images, resumed.method.state_dict()[key], strict=True)), key


def test_cyclegan_saves_all_four_networks_and_its_pools(fake_data_root, tmp_path):
    trainer = train("cyclegan", fake_data_root, tmp_path / "run", 3)
    checkpoint = trainer.run_dir / "checkpoints" / "step_00000003"
    names = {"generator", "generator_ba", "discriminator", "discriminator_a"}
    assert {p.stem for p in checkpoint.glob("*.safetensors")} >= names
    pools = torch.load(checkpoint / "state.pt", weights_only=False)["method"]
    assert [len(pools["pool_fake_b"]), len(pools["pool_fake_a"])] == [2, 2]


def test_cyclegan_pool_returns_stored_images_once_full():
    from i2i.methods.cyclegan import ImagePool

    torch.manual_seed(0)
    pool = ImagePool(2)
    first, second = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    assert torch.equal(pool.query(first), first) and torch.equal(pool.query(second), second)
    queries = [torch.full((1, 1, 2, 2), 5.0 + i) for i in range(40)]
    from_history = [q for q in queries if not torch.equal(pool.query(q), q)]
    assert 8 <= len(from_history) <= 32, "about half the queries should return an older image"
    assert len(pool.images) == 2


def test_unpaired_methods_refuse_reconstruction_losses(fake_data_root):
    recipe = unpaired_recipe("cyclegan", fake_data_root)
    recipe["losses"].append({"name": "l1", "weight": 100.0})
    with pytest.raises(RecipeError, match=r"losses.1: cyclegan's reconstruction terms are its cycle and identity"):
        Recipe.from_dict(recipe)


def test_cut_needs_a_generator_with_an_encoder(fake_data_root, tmp_path):
    from i2i.errors import I2IError

    recipe = unpaired_recipe("cut", fake_data_root)
    recipe["model"]["generator"] = {"name": "unet", "params": {"num_downs": 5, "ngf": 8}}
    with pytest.raises(I2IError, match="generator 'unet' has no encode"):
        Trainer(Recipe.from_dict(recipe), run_dir=tmp_path)


def test_patch_nce_prefers_the_same_place():
    from i2i.methods.cut import patch_nce

    torch.manual_seed(0)
    keys = torch.nn.functional.normalize(torch.randn(32, 8), dim=1)
    matched = patch_nce(keys.clone(), keys, batch_size=2, temperature=0.07).mean()
    shuffled = patch_nce(keys[torch.randperm(32)], keys, batch_size=2, temperature=0.07).mean()
    assert matched < 0.1 < shuffled
    assert patch_nce(keys, keys, 2, 0.07).shape == (32,)


@pytest.fixture(scope="module")
def unpaired_runs(tmp_path_factory) -> dict:
    """A finished 2-step cyclegan run and cut run on a tiny trainA/trainB folder."""
    from conftest import write_fake_photos

    root = tmp_path_factory.mktemp("unpaired")
    for side, seed in (("A", 1), ("B", 2)):
        write_fake_photos(root / "data" / f"train{side}", 3, (40, 40), seed=seed)
    runs = {}
    for method in ("cyclegan", "cut"):
        runs[method] = train(method, root / "data", root / method, 2).run_dir
    runs["inputs"] = root / "data" / "trainA"
    return runs


def test_load_gives_each_direction_at_the_input_size(unpaired_runs):
    import numpy as np

    import i2i

    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)  # no multiple of 4
    forward = i2i.load(unpaired_runs["cyclegan"], device="cpu")
    backward = i2i.load(unpaired_runs["cyclegan"], device="cpu", direction="BtoA")
    assert forward.metadata["direction"] == "AtoB" and backward.metadata["direction"] == "BtoA"
    out_forward, out_backward = forward(image), backward(image)
    assert out_forward.shape == out_backward.shape == image.shape
    assert not np.array_equal(out_forward, out_backward), "the two directions are two different generators"
    alone = i2i.load(unpaired_runs["cyclegan"] / "checkpoints" / "step_00000002" / "generator_ba.safetensors", device="cpu")
    assert alone.metadata["direction"] == "BtoA" and np.array_equal(alone(image), out_backward)


def test_cut_has_no_reverse_direction(unpaired_runs):
    import i2i
    from i2i.errors import I2IError

    assert i2i.load(unpaired_runs["cut"], device="cpu")(torch.rand(3, 36, 44) * 2 - 1).shape == (3, 36, 44)
    with pytest.raises(I2IError, match="method cut trains one generator, A -> B"):
        i2i.load(unpaired_runs["cut"], device="cpu", direction="BtoA")


def test_translate_a_folder_both_ways(unpaired_runs, tmp_path):
    from typer.testing import CliRunner

    from i2i.cli import app

    for direction in ("AtoB", "BtoA"):
        out = tmp_path / direction
        result = CliRunner().invoke(app, ["translate", "--checkpoint", str(unpaired_runs["cyclegan"]), "--input",
                                          str(unpaired_runs["inputs"]), "--output", str(out), "--device", "cpu",
                                          "--direction", direction])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == ["1.png", "2.png", "3.png"]


def test_no_eval_statistics_for_generators_without_batchnorm(fake_data_root, tmp_path):
    """Instance norm keeps no running statistics: a checkpoint spends no passes recomputing them."""
    recipe = Recipe.from_dict(unpaired_recipe("cyclegan", fake_data_root, max_steps=1, eval_bn_batches=4))
    trainer = Trainer(recipe, run_dir=tmp_path / "run")
    trainer.fit()
    checkpoint = trainer.run_dir / "checkpoints" / "step_00000001"
    assert not (checkpoint / "generator_eval.safetensors").exists()


@pytest.mark.parametrize("method, roles", [
    ("cyclegan", ["generator", "generator_ba", "discriminator", "discriminator_a"]),
    ("cut", ["generator", "nce_heads", "discriminator"]),
])
def test_the_start_summary_lists_every_network_with_its_parameters(method, roles, fake_data_root, tmp_path):
    from i2i.run import start_summary

    trainer = Trainer(Recipe.from_dict(unpaired_recipe(method, fake_data_root, max_steps=1)), run_dir=tmp_path / "run")
    summary = start_summary(trainer, tensorboard=False)
    listed = re.findall(r"^  (\w+) +(\w+) \(([\d,]+) parameters\)$", summary, re.M)
    assert [role for role, _, _ in listed] == roles == list(trainer.networks)
    for role, name, count in listed:
        assert int(count.replace(",", "")) == sum(p.numel() for p in trainer.networks[role].parameters()), role
    assert dict((role, name) for role, name, _ in listed)["discriminator"] == "patchgan"
