"""Every shipped recipe validates, builds, and trains two steps at a tiny size (as litgpt's suite does)."""

from importlib import metadata

import pytest
import yaml

from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import RECIPES, shrink


def skip_without_its_plugins(path):
    """A recipe that names plugin distributions (``plugins:``) can only run where they are installed."""
    for dist in yaml.safe_load(path.read_text()).get("plugins") or []:
        try:
            metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            pytest.skip(f"{path.name} needs the plugin distribution {dist}, which is not installed")


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(path):
    skip_without_its_plugins(path)
    recipe = Recipe.from_file(path)
    assert recipe.name == path.stem, "a recipe's name is its file name"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_two_steps(path, fake_data_root, tmp_path):
    skip_without_its_plugins(path)
    recipe = Recipe.from_dict(shrink(yaml.safe_load(path.read_text()), fake_data_root))
    trainer = Trainer(recipe, run_dir=tmp_path / "run")
    losses = trainer.fit()
    assert trainer.step == 2
    assert losses and all(v == v for v in losses.values())
    assert (tmp_path / "run" / "checkpoints").is_dir()
