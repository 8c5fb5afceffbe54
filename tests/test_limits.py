"""Recipe values past the components' limits (i2i/engine/limits.py): refused before training."""

import pytest
import torch
import yaml
from i2i.contracts import Generator, Params
from i2i.engine.limits import MAX_SIDE, check_limits, limit_problems
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, RecipeError
from i2i.registry import GENERATORS, Entry

from conftest import RECIPES, ROOT, shrink, tiny_recipe

FLAGSHIP = ROOT / "recipes" / "pix2pix_maps.yaml"


def test_a_crop_that_is_not_a_multiple_of_the_generators_is_refused():
    recipe = Recipe.from_file(FLAGSHIP, ["data.load_size=140", "data.crop_size=128"])
    with pytest.raises(RecipeError, match=r"data.crop_size: 128 is not a multiple of 256, which generator unet "
                                          r"needs .*; use 256"):
        check_limits(recipe, str(FLAGSHIP))
    assert limit_problems(Recipe.from_file(FLAGSHIP, ["data.load_size=300", "data.crop_size=270"])) == [
        "data.crop_size: 270 is not a multiple of 256, which generator unet needs (its input sides must divide "
        "by 256 with these params); use 256 or 512"]


@pytest.mark.parametrize("key", ["load_size", "crop_size"])
def test_sizes_past_the_limit_are_refused_with_the_memory_they_would_take(key):
    recipe = Recipe.from_file(FLAGSHIP, [f"data.load_size=100000", f"data.crop_size={256 if key == 'load_size' else 100000}"])
    problems = limit_problems(recipe)
    assert problems[0] == (f"data.load_size: 100000 is above the limit of {MAX_SIDE}: one 100000x100000 RGB image "
                           f"alone takes 27.9 GiB in 8 bits and 111.8 GiB as a float32 tensor")
    assert len(problems) == (1 if key == "load_size" else 2)


def small_crop(crop: int, batch: int = 1, **generator) -> Recipe:
    recipe = tiny_recipe(data={"load_size": crop, "crop_size": crop, "dataset": {"name": "synthetic", "params": {"length": 4}}},
                         train={"batch_size": batch, "max_steps": 1})
    recipe["model"]["generator"]["params"].update(generator)
    return Recipe.from_dict(recipe)


def test_a_crop_too_small_for_the_networks_names_one_that_fits_and_that_one_trains(tmp_path):
    # ResNet: two stride-2 convolutions take 4x4 to 1x1, where normalisation has one value per channel.
    recipe = Recipe.from_dict(tiny_recipe(
        model={"generator": {"name": "resnet", "params": {"ngf": 8, "n_blocks": 1}},
               "discriminator": {"name": "pixelgan", "params": {"ndf": 8}}},
        data={"load_size": 4, "crop_size": 4}, train={"batch_size": 1, "max_steps": 1}))
    (problem,) = limit_problems(recipe)
    assert problem.startswith("data.crop_size: 4 is too small at train.batch_size 1: generator resnet fails "
                              "(ValueError: Expected more than 1 ")
    fits = int(problem.split("A crop of ")[1].split()[0])
    assert fits == 8
    with pytest.raises(ValueError, match="Expected more than 1 "):  # what the check saves us from
        Trainer(recipe, run_dir=tmp_path / "small").fit()
    good = Recipe.from_dict(yaml.safe_load(recipe.to_yaml()) | {"data": {**recipe.data.model_dump(mode="json"),
                                                                          "load_size": fits, "crop_size": fits}})
    assert limit_problems(good) == []
    Trainer(good, run_dir=tmp_path / "fits").fit()


def test_a_larger_batch_can_make_a_small_crop_fit():
    assert limit_problems(small_crop(32, batch=1, num_downs=5)) == []
    assert "discriminator patchgan fails" in limit_problems(small_crop(8, batch=1, num_downs=3))[0]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_is_within_its_limits_as_shipped_and_shrunk(path, fake_data_root):
    assert limit_problems(Recipe.from_file(path)) == []
    assert limit_problems(Recipe.from_dict(shrink(yaml.safe_load(path.read_text()), fake_data_root))) == []


class Shrinks(Generator):
    """A generator that returns half-size images, against its contract."""

    def __init__(self, params, in_channels=3, out_channels=3):
        super().__init__(params)
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 2, 2)

    @classmethod
    def size_multiple_for(cls, params):
        return 2

    def forward(self, x):
        return self.conv(x)


class ReadsValues(Shrinks):
    """A generator whose forward pass reads a value: it cannot run on the meta device."""

    def forward(self, x):
        return x * float(x.mean())


@pytest.fixture
def odd_generator(monkeypatch):
    def install(cls):
        monkeypatch.setitem(GENERATORS._entries, "odd", Entry("odd", cls, Params))
        recipe = tiny_recipe()
        recipe["model"]["generator"] = {"name": "odd"}
        return Recipe.from_dict(recipe)

    return install


def test_a_generator_that_returns_another_size_is_refused(odd_generator):
    (problem,) = limit_problems(odd_generator(Shrinks))
    assert problem == ("model.generator: generator odd returns 16x16 for 32x32 inputs; "
                       "a generator must return images of its input's size")


def test_networks_that_cannot_run_on_the_meta_device_are_left_to_training(odd_generator):
    recipe = odd_generator(ReadsValues)
    with pytest.raises(Exception):  # the premise: it does fail on the meta device
        ReadsValues(Params())(torch.empty(1, 3, 8, 8, device="meta"))
    assert limit_problems(recipe) == []
