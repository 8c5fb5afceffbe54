"""Every shipped recipe validates, builds, and trains two steps at a tiny size (as litgpt's suite does)."""

import pytest
import yaml

from i2i.engine.trainer import Trainer
from i2i.recipe import load_recipe, validate_recipe

from conftest import RECIPES, shrink


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem, "a recipe's name is its file name"


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_two_steps(path, fake_data_root, tmp_path):
    recipe = validate_recipe(shrink(yaml.safe_load(path.read_text()), fake_data_root))
    trainer = Trainer(recipe, run_dir=tmp_path / "run")
    losses = trainer.fit()
    assert trainer.step == 2
    assert losses and all(v == v for v in losses.values())
    assert (tmp_path / "run" / "checkpoints").is_dir()
