"""Broken recipes are reported with the YAML path of the problem, never a traceback."""

import pytest

from i2i.recipe import Recipe, RecipeError, apply_overrides

from conftest import tiny_recipe


def problems(recipe: dict) -> str:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict(recipe, "r.yaml")
    return str(info.value)


def test_tiny_recipe_is_valid():
    recipe = Recipe.from_dict(tiny_recipe())
    assert recipe.model.generator.params.ngf == 8
    assert recipe.model.generator.params.norm == "batch"  # defaults are filled in


def test_unknown_component_suggests_close_names():
    recipe = tiny_recipe()
    recipe["model"]["generator"]["name"] = "unett"
    message = problems(recipe)
    assert "model.generator.name" in message and "Did you mean 'unet'" in message


def test_unknown_param_key_names_its_path():
    recipe = tiny_recipe()
    recipe["model"]["generator"]["params"]["ngff"] = 3
    assert "model.generator.params.ngff: Extra inputs are not permitted" in problems(recipe)


def test_wrong_type_names_path_and_value():
    recipe = tiny_recipe()
    recipe["model"]["discriminator"]["params"]["ndf"] = "wide"
    message = problems(recipe)
    assert "model.discriminator.params.ndf" in message and "'wide'" in message


def test_bad_direction():
    assert "data.direction" in problems(tiny_recipe(data={"direction": "AtoC"}))


def test_unknown_section_key():
    assert "train.epoch: Extra inputs are not permitted" in problems(tiny_recipe(train={"epoch": 3}))


def test_loss_params_and_adversarial_count():
    recipe = tiny_recipe(losses=[{"name": "l1", "weight": 100}])
    assert "exactly one adversarial loss" in problems(recipe)
    recipe = tiny_recipe(losses=[{"name": "gan", "params": {"mode": "wgan"}}])
    assert "losses.0.params.mode" in problems(recipe)


def test_crop_larger_than_load():
    assert "crop_size 64 is larger than load_size 36" in problems(tiny_recipe(data={"crop_size": 64}))


def test_not_a_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="expected a mapping"):
        Recipe.from_file(path)
    path.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_file(path)
    with pytest.raises(RecipeError, match="cannot read"):
        Recipe.from_file(tmp_path / "missing.yaml")


def test_overrides_are_typed_and_validated(write_recipe):
    path = write_recipe(tiny_recipe())
    recipe = Recipe.from_file(path, ["train.lr=1e-3", "model.generator.params.ngf=4", "losses.1.weight=10", "train.betas=[0.9, 0.99]"])
    assert recipe.train.lr == 1e-3 and recipe.model.generator.params.ngf == 4
    assert recipe.losses[1].weight == 10 and recipe.train.betas == (0.9, 0.99)
    with pytest.raises(RecipeError, match="model.generator.params.ngf"):
        Recipe.from_file(path, ["model.generator.params.ngf=-1"])
    with pytest.raises(RecipeError, match="expected key=value"):
        Recipe.from_file(path, ["train.lr"])
    with pytest.raises(RecipeError, match="no such list item"):
        apply_overrides({"losses": []}, ["losses.3=1"])
