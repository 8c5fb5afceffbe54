"""Importing generators saved by the pix2pix reference implementation.

``ReferenceUNet`` below is written from the published description of the reference's
U-Net (one skip block per level, built recursively from the innermost out; each block
keeps its layers in a ``model`` Sequential; LeakyReLU 0.2 down, ReLU up, Tanh at the
top; BatchNorm after every convolution but the outermost two and the innermost down
one, which is why only the outermost up convolution has a bias; dropout 0.5 in the
ngf*8 -> ngf*8 blocks between the innermost and the ngf*4 -> ngf*8 block), so its state
dict has the reference's key names and nesting. It does what the reference does in
place: its LeakyReLU overwrites the block input that is also the skip.

Train mode is compared with dropout on: both networks draw their dropout masks in the
same order (innermost level first, on the way up), so seeding the global RNG the same
way before each forward gives both the same masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from typer.testing import CliRunner

from conftest import tiny_recipe
from i2i.cli import app
from i2i.engine.inference import generator_mode, load_generator
from i2i.models.unet import UNetGenerator, UNetParams
from i2i.recipe import Recipe, RecipeError, find_recipe
from i2i.reference_weights import (
    WeightsError,
    convert,
    import_reference_weights,
)


class ReferenceBlock(nn.Module):
    def __init__(self, outer: int, inner: int, inside: nn.Module | None, in_channels: int | None = None,
                 outermost: bool = False, dropout: bool = False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer, inner, 4, 2, 1, bias=False)
        if outermost:
            layers = [down, inside, nn.ReLU(True), nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1), nn.Tanh()]
        elif inside is None:  # innermost
            layers = [nn.LeakyReLU(0.2, True), down, nn.ReLU(True),
                      nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
        else:
            layers = [nn.LeakyReLU(0.2, True), down, nn.BatchNorm2d(inner), inside, nn.ReLU(True),
                      nn.ConvTranspose2d(2 * inner, outer, 4, 2, 1, bias=False), nn.BatchNorm2d(outer)]
            layers += [nn.Dropout(0.5)] if dropout else []
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class ReferenceUNet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, num_downs: int = 8, ngf: int = 64):
        super().__init__()
        widest = 8 * ngf
        inner = [min(ngf * 2**level, widest) for level in range(num_downs)]  # each level's inner width
        block = None
        for level in range(num_downs - 1, 0, -1):
            outer = inner[level - 1]
            dropout = block is not None and outer == inner[level] == widest
            block = ReferenceBlock(outer, inner[level], block, dropout=dropout)
        self.model = ReferenceBlock(out_channels, ngf, block, in_channels=in_channels, outermost=True)

    def forward(self, x):
        return self.model(x)


def trained_looking(net: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so eval mode tests the running statistics too."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var") or (name.endswith("weight") and tensor.dim() == 1):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return net


def unet_recipe(num_downs: int, ngf: int) -> Recipe:
    side = 2**num_downs
    params = {"num_downs": num_downs, "ngf": ngf, "norm": "batch", "dropout": 0.5}
    data = tiny_recipe(
        model={"generator": {"name": "unet", "params": params},
               "discriminator": {"name": "patchgan", "params": {"ndf": 8, "n_layers": 2}}},
        data={"dataset": {"name": "synthetic", "params": {"length": 2, "size": side}}, "load_size": side, "crop_size": side},
    )
    return Recipe.from_dict(data, "test recipe")


def save(state: dict, path: Path, legacy: bool = False) -> Path:
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


# -- the mapping --------------------------------------------------------------------------
def test_unet_256_mapping_is_complete_and_named_as_published(one_torch_thread):
    """The full reference unet_256 (on the meta device: shapes only) against i2i's U-Net defaults."""
    assert UNetParams() == UNetParams(num_downs=8, ngf=64, norm="batch", dropout=0.5), "i2i's defaults are unet_256"
    with torch.device("meta"):
        reference = ReferenceUNet()
    ours = UNetGenerator(UNetParams())
    state = reference.state_dict()
    converted = convert(state, ours, "unet_256")
    assert converted.keys() == ours.state_dict().keys()
    assert sum(t.numel() for t in converted.values()) == sum(t.numel() for t in state.values())
    innermost = "model.model.1" + ".model.3" * 6 + ".model."
    published = {  # names and shapes as in the reference's saved generators
        "model.model.0.weight": (64, 3, 4, 4),
        "model.model.3.weight": (128, 3, 4, 4),
        "model.model.3.bias": (3,),
        "model.model.1.model.1.weight": (128, 64, 4, 4),
        "model.model.1.model.2.running_var": (128,),
        "model.model.1.model.5.weight": (256, 64, 4, 4),
        innermost + "1.weight": (512, 512, 4, 4),
        innermost + "3.weight": (512, 512, 4, 4),
        innermost + "4.running_mean": (512,),
    }
    assert {k: tuple(state[k].shape) for k in published} == published
    dropouts = [m for m in reference.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 3 == sum(isinstance(m, nn.Dropout) for m in ours.modules())


@pytest.mark.parametrize("num_downs, ngf", [(8, 4), (6, 8)], ids=["unet_256-depth", "depth6"])
def test_imported_generator_gives_the_reference_output(tmp_path, num_downs, ngf, one_torch_thread):
    torch.manual_seed(0)
    reference = trained_looking(ReferenceUNet(3, 3, num_downs, ngf))
    file = save(reference.state_dict(), tmp_path / "latest_net_G.pth")
    folder = import_reference_weights(file, unet_recipe(num_downs, ngf), tmp_path / "imported")
    ours, recipe, metadata = load_generator(folder)
    assert (metadata["in_channels"], metadata["out_channels"], metadata["imported_from"]) == ("3", "3", "latest_net_G.pth")
    x = torch.rand(2, 3, 2**num_downs, 2**num_downs) * 2 - 1
    with torch.no_grad():
        reference.eval()
        with generator_mode(ours, "eval"):
            assert torch.allclose(ours(x), reference(x), atol=1e-6, rtol=0)
        reference.train()
        outputs = {}
        one = x[:1]  # the reference's test: one image at a time in train mode
        for seed in (1, 2):
            with generator_mode(ours, "train", seed=seed):
                outputs[seed] = ours(one)
            torch.manual_seed(seed)
            assert torch.allclose(outputs[seed], reference(one), atol=1e-6, rtol=0)
    if num_downs == 8:
        assert not torch.allclose(outputs[1], outputs[2], atol=1e-3), "dropout was active in train mode"


@pytest.mark.parametrize("variant", ["legacy-format", "module-prefix", "no-num_batches_tracked"])
def test_published_file_variants_import(tmp_path, variant, one_torch_thread):
    reference = trained_looking(ReferenceUNet(3, 3, 6, 8))
    state = reference.state_dict()
    if variant == "module-prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    if variant == "no-num_batches_tracked":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    file = save(state, tmp_path / "g.pth", legacy=variant == "legacy-format")
    folder = import_reference_weights(file, unet_recipe(6, 8), tmp_path / "out")
    ours = load_generator(folder)[0].eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x), reference.eval()(x), atol=1e-6, rtol=0)


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.5, 0.01])
def test_truncated_file_is_a_clear_error(tmp_path, legacy, keep):
    data = save(ReferenceUNet(3, 3, 6, 8).state_dict(), tmp_path / "whole.pth", legacy).read_bytes()
    file = tmp_path / "cut.pth"
    file.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(WeightsError, match="cut.pth.*(truncated or damaged|damaged; download)"):
        import_reference_weights(file, unet_recipe(6, 8), tmp_path / "out")
    assert not (tmp_path / "out").exists()


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code from the file ran"))


def test_pickle_that_carries_code_is_refused(tmp_path):
    marker = tmp_path / "ran.txt"
    file = save({"model.model.0.weight": torch.zeros(1), "payload": RunsCode(marker)}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="refusing to load .*evil.pth.*run code"):
        import_reference_weights(file, unet_recipe(6, 8), tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_other_architecture_lists_the_mismatched_tensors(tmp_path):
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
    file = save(other.state_dict(), tmp_path / "resnet.pth")
    with pytest.raises(WeightsError) as error:
        import_reference_weights(file, unet_recipe(6, 8), tmp_path / "out")
    message = str(error.value)
    assert "does not fit the reference U-Net layout" in message
    assert "missing model.model.0.weight (8, 3, 4, 4)" in message and "unexpected 0.weight (8, 3, 3, 3)" in message
    assert not (tmp_path / "out").exists()


def test_other_width_and_depth_list_shapes_and_leftovers(tmp_path):
    file = save(ReferenceUNet(3, 3, 7, 4).state_dict(), tmp_path / "unet_128_ngf4.pth")
    with pytest.raises(WeightsError) as error:
        import_reference_weights(file, unet_recipe(6, 8), tmp_path / "out")
    message = str(error.value)
    assert "shape of model.model.0.weight: file (4, 3, 4, 4), expected (8, 3, 4, 4)" in message
    assert "unexpected model.model.1" in message  # the seventh level has no place in a six-level U-Net


def test_not_a_state_dict_and_not_a_reference_generator(tmp_path):
    file = save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a plain state dict"):
        import_reference_weights(file, unet_recipe(6, 8), tmp_path / "out")
    timm = unet_recipe(6, 8).variant(**{"model.generator": {"name": "timm_unet", "params": {"backbone": "test_resnet"}}})
    with pytest.raises(WeightsError, match="uses generator 'timm_unet'"):
        import_reference_weights(file, timm, tmp_path / "out")


def test_recipe_names_resolve_to_shipped_recipes():
    assert find_recipe("pix2pix_maps").name == "pix2pix_maps.yaml" and find_recipe("pix2pix_maps").is_file()
    with pytest.raises(RecipeError, match="pix2pix_map:\n.*no recipe of that name comes with i2i; did you mean pix2pix_maps"):
        find_recipe("pix2pix_map")


# -- the command line ---------------------------------------------------------------------
def test_cli_import_then_translate(tmp_path, one_torch_thread):
    reference = trained_looking(ReferenceUNet(3, 3, 6, 8))
    file = save(reference.state_dict(), tmp_path / "map2sat.pth")
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(unet_recipe(6, 8).model_dump(mode="json")))
    runner = CliRunner()
    result = runner.invoke(app, ["import-weights", str(file), "--recipe", str(recipe_file)])
    assert result.exit_code == 0, result.output
    folder = tmp_path / "map2sat"
    assert sorted(p.name for p in folder.iterdir()) == ["generator.safetensors", "manifest.json"]
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    result = runner.invoke(app, ["translate", "--checkpoint", str(folder), "--input", str(tmp_path / "in.png"),
                                 "--output", str(tmp_path / "out"), "--device", "cpu", "--mode", "eval"])
    assert result.exit_code == 0, result.output
    (written,) = (tmp_path / "out").iterdir()
    translated = np.asarray(Image.open(written))
    x = torch.from_numpy(image).permute(2, 0, 1).float().div(127.5).sub(1)[None]
    with torch.no_grad():
        expected = reference.eval()(x)[0].add(1).mul(127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    assert np.abs(translated.astype(int) - expected.astype(int)).max() <= 1
    again = runner.invoke(app, ["import-weights", str(file), "--recipe", str(recipe_file)])
    assert isinstance(again.exception, WeightsError) and "already holds" in str(again.exception)
