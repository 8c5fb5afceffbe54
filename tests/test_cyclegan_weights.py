"""Importing the reference's CycleGAN generators (``resnet_9blocks``, ``resnet_6blocks``).

``ReferenceResnet`` below is written from the published description of the reference's
ResNet generator (CycleGAN paper, appendix 7.2, and the reference's naming): one ``model``
Sequential of reflection pad 3, 7x7 conv, norm, ReLU; two stride-2 3x3 convs each with norm
and ReLU; the residual blocks, each keeping reflection pad 1, 3x3 conv, norm, ReLU,
[dropout], reflection pad 1, 3x3 conv, norm in a ``conv_block`` Sequential; two stride-2
transposed 3x3 convs (output padding 1) each with norm and ReLU; reflection pad 3, 7x7 conv,
tanh. Convolutions carry a bias (instance norm has no affine shift to replace it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import tiny_recipe
from i2i.engine.inference import load_generator
from i2i.model_catalogue import CYCLEGAN_RECIPE, MODELS, ModelEntry, ensure_model, model_recipe, source_url
from i2i.models.resnet import ResnetGenerator, ResnetParams
from i2i.recipe import Recipe, shipped_recipes
from i2i.reference_weights import WeightsError, convert, import_reference_weights
from test_download import server  # noqa: F401  (the loopback server fixture)


class ReferenceResnetBlock(nn.Module):
    def __init__(self, dim: int, dropout: bool = False):
        super().__init__()
        layers = [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim), nn.ReLU(True)]
        layers += [nn.Dropout(0.5)] if dropout else []
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3), nn.InstanceNorm2d(dim)]
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv_block(x)


class ReferenceResnet(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 3, ngf: int = 64, n_blocks: int = 9, dropout: bool = False):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
        layers += [ReferenceResnetBlock(ngf * 4, dropout) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def random_weights(net: nn.Module, seed: int = 0) -> nn.Module:
    """Weights far from the initialisation, so a misplaced tensor shows in the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
    return net


def with_old_instance_norm_statistics(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as PyTorch before 0.4 saved it: InstanceNorm kept running statistics."""
    state = dict(net.state_dict())
    for name, layer in net.named_modules():
        if isinstance(layer, nn.InstanceNorm2d):
            state[f"{name}.running_mean"] = torch.randn(layer.num_features)
            state[f"{name}.running_var"] = torch.rand(layer.num_features) + 0.5
    return state


def resnet_recipe(n_blocks: int = 9, ngf: int = 4, dropout: float = 0.0) -> Recipe:
    params = {"n_blocks": n_blocks, "ngf": ngf, "norm": "instance", "dropout": dropout}
    return Recipe.from_dict(tiny_recipe(model={"generator": {"name": "resnet", "params": params}}), "test recipe")


def test_resnet_9blocks_mapping_is_complete_and_named_as_published():
    with torch.device("meta"):
        reference, ours = ReferenceResnet(), ResnetGenerator(ResnetParams())
    state = reference.state_dict()
    assert sum(t.numel() for t in state.values()) == 11_378_179
    converted = convert(state, ours, "resnet_9blocks")
    assert converted.keys() == ours.state_dict().keys()
    published = {  # names and shapes as in the reference's saved CycleGAN generators
        "model.1.weight": (64, 3, 7, 7),
        "model.4.weight": (128, 64, 3, 3),
        "model.7.bias": (256,),
        "model.10.conv_block.1.weight": (256, 256, 3, 3),
        "model.18.conv_block.5.bias": (256,),
        "model.19.weight": (256, 128, 3, 3),
        "model.22.weight": (128, 64, 3, 3),
        "model.26.weight": (3, 64, 7, 7),
        "model.26.bias": (3,),
    }
    assert {k: tuple(state[k].shape) for k in published} == published
    assert converted["model.10.block.1.weight"] is state["model.10.conv_block.1.weight"]


@pytest.mark.parametrize("n_blocks, dropout", [(9, False), (6, False), (6, True)], ids=["resnet_9blocks", "resnet_6blocks", "dropout"])
def test_imported_generator_gives_the_reference_output(tmp_path, n_blocks, dropout, one_torch_thread):
    reference = random_weights(ReferenceResnet(3, 3, 4, n_blocks, dropout)).eval()
    file = tmp_path / "latest_net_G_A.pth"
    torch.save(reference.state_dict(), file)
    folder = import_reference_weights(file, resnet_recipe(n_blocks, dropout=0.5 if dropout else 0.0), tmp_path / "imported")
    ours, _, metadata = load_generator(folder)
    assert (metadata["in_channels"], metadata["out_channels"], metadata["size_multiple"]) == ("3", "3", "4")
    x = torch.rand(2, 3, 36, 28) * 2 - 1  # any size that divides by 4
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), reference(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant", ["instance-norm-statistics", "module-prefix", "legacy-format"])
def test_published_file_variants_import(tmp_path, variant, one_torch_thread):
    reference = random_weights(ReferenceResnet(3, 3, 4, 6)).eval()
    state = with_old_instance_norm_statistics(reference) if variant == "instance-norm-statistics" else reference.state_dict()
    if variant == "module-prefix":
        state = {f"module.{k}": v for k, v in state.items()}
    file = tmp_path / "g.pth"
    torch.save(state, file, _use_new_zipfile_serialization=variant != "legacy-format")
    ours = load_generator(import_reference_weights(file, resnet_recipe(6), tmp_path / "out"))[0].eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=0)


def test_gray_and_other_channel_counts_come_from_the_file(tmp_path, one_torch_thread):
    reference = random_weights(ReferenceResnet(1, 3, 4, 6)).eval()
    file = tmp_path / "gray2rgb.pth"
    torch.save(reference.state_dict(), file)
    ours, _, metadata = load_generator(import_reference_weights(file, resnet_recipe(6), tmp_path / "out"))
    assert (metadata["in_channels"], metadata["out_channels"]) == ("1", "3")
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), reference(x), atol=1e-5, rtol=0)


def test_block_count_mismatch_lists_what_is_missing(tmp_path):
    file = tmp_path / "resnet_6blocks.pth"
    torch.save(ReferenceResnet(3, 3, 4, 6).state_dict(), file)
    with pytest.raises(WeightsError) as error:
        import_reference_weights(file, resnet_recipe(9), tmp_path / "out")
    message = str(error.value)
    assert "does not fit the reference ResNet layout" in message
    assert "missing model.16.conv_block.1.weight (16, 16, 3, 3)" in message  # i2i's seventh block
    assert "unexpected model.16.weight" in message  # the 6-block file's up conv sits where i2i has a block
    assert not (tmp_path / "out").exists()


def test_statistics_where_no_instance_norm_is_are_left_over(tmp_path):
    """Only the InstanceNorm layers' statistics are dropped; anything else stays an error."""
    state = dict(ReferenceResnet(3, 3, 4, 6).state_dict())
    state["model.1.running_mean"] = torch.zeros(4)  # a conv has no statistics
    file = tmp_path / "odd.pth"
    torch.save(state, file)
    with pytest.raises(WeightsError, match=r"(?s)1 left over.*unexpected model.1.running_mean \(4,\)"):
        import_reference_weights(file, resnet_recipe(6), tmp_path / "out")


def test_a_unet_file_does_not_fit_a_resnet_recipe(tmp_path):
    from test_reference_weights import ReferenceUNet

    file = tmp_path / "unet.pth"
    torch.save(ReferenceUNet(3, 3, 6, 8).state_dict(), file)
    with pytest.raises(WeightsError, match="does not fit the reference ResNet layout"):
        import_reference_weights(file, resnet_recipe(6), tmp_path / "out")


def test_cut_generator_is_not_the_cyclegan_layout(tmp_path):
    file = tmp_path / "cyclegan.pth"
    torch.save(ReferenceResnet(3, 3, 4, 6).state_dict(), file)
    cut = resnet_recipe(6).variant(**{"model.generator.params.antialias": True})
    with pytest.raises(WeightsError, match="does not fit the CUT ResNet"):
        import_reference_weights(file, cut, tmp_path / "out")


def test_file_name_is_kept_in_the_metadata(tmp_path: Path, one_torch_thread):
    file = tmp_path / "horse2zebra.pth"
    torch.save(ReferenceResnet(3, 3, 4, 6).state_dict(), file)
    _, recipe, metadata = load_generator(import_reference_weights(file, resnet_recipe(6), tmp_path / "out"))
    assert metadata["imported_from"] == "horse2zebra.pth" and recipe.model.generator.name == "resnet"


# -- the model catalogue ------------------------------------------------------------------
PUBLISHED = [  # the reference's scripts/download_cyclegan_model.sh
    "apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite", "horse2zebra", "zebra2horse",
    "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe", "style_vangogh", "sat2map", "map2sat",
    "cityscapes_photo2label", "cityscapes_label2photo", "facades_photo2label", "facades_label2photo", "iphone2dslr_flower",
]


def test_the_catalogue_holds_the_published_cyclegan_generators_under_their_own_prefix(monkeypatch):
    monkeypatch.delenv("I2I_MODELS_URL", raising=False)
    assert [name for name in MODELS if name.startswith("cyclegan/")] == [f"cyclegan/{name}" for name in PUBLISHED]
    assert MODELS["map2sat"].recipe == "pix2pix_maps", "the pix2pix names keep meaning the pix2pix generators"
    assert source_url(MODELS["cyclegan/map2sat"]) == "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/map2sat.pth"
    assert source_url(MODELS["map2sat"]) == "http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch/map2sat.pth"
    monkeypatch.setenv("I2I_MODELS_URL", "http://mirror/models/")
    assert source_url(MODELS["cyclegan/map2sat"]) == "http://mirror/models/cyclegan/map2sat.pth"
    assert source_url(MODELS["map2sat"]) == "http://mirror/models/map2sat.pth"


@pytest.mark.parametrize("name, data_root, direction", [
    ("horse2zebra", "data/cyclegan/horse2zebra", "AtoB"), ("zebra2horse", "data/cyclegan/horse2zebra", "BtoA"),
    ("style_monet", "data/cyclegan/monet2photo", "BtoA"), ("monet2photo", "data/cyclegan/monet2photo", "AtoB"),
    ("sat2map", "data/cyclegan/maps", "AtoB"), ("cityscapes_label2photo", "data/cyclegan/cityscapes", "BtoA"),
])
def test_each_generator_names_its_set_and_direction(name, data_root, direction):
    entry = MODELS[f"cyclegan/{name}"]
    assert (entry.data_root, entry.direction, entry.file, entry.recipe) == (data_root, direction, name, CYCLEGAN_RECIPE)


def test_the_recipe_they_travel_with_has_the_reference_resnet_9blocks():
    if not (shipped_recipes() / f"{CYCLEGAN_RECIPE}.yaml").is_file():
        pytest.skip(f"recipes/{CYCLEGAN_RECIPE}.yaml is not in this checkout")
    recipe = model_recipe(MODELS["cyclegan/zebra2horse"])
    assert recipe.model.generator.name == "resnet"
    assert recipe.model.generator.params == ResnetParams(n_blocks=9, ngf=64, norm="instance", dropout=0.0)
    assert (str(recipe.data.root), recipe.data.direction) == ("data/cyclegan/horse2zebra", "BtoA")


@pytest.fixture
def published_cyclegan(server, tmp_path, monkeypatch):
    """A small reference-layout ResNet published as cyclegan/tiny_horse2zebra.pth on the
    loopback server, its catalogue entry and a cache in tmp_path."""
    reference = random_weights(ReferenceResnet(3, 3, 4, 6)).eval()
    torch.save(reference.state_dict(), tmp_path / "published.pth")
    server.publish("cyclegan/tiny_horse2zebra.pth", (tmp_path / "published.pth").read_bytes())
    recipe = tmp_path / "tiny_cyclegan.yaml"
    recipe.write_text(yaml.safe_dump(resnet_recipe(6).model_dump(mode="json")))
    entry = ModelEntry("cyclegan/tiny_horse2zebra", "horse -> zebra (small)", str(recipe), "AtoB", "data/cyclegan/horse2zebra")
    monkeypatch.setitem(MODELS, entry.name, entry)
    monkeypatch.setenv("I2I_MODELS_URL", server.url)
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    return reference


def test_download_converts_on_arrival(published_cyclegan, server, tmp_path, one_torch_thread):
    folder = ensure_model("cyclegan/tiny_horse2zebra")
    assert folder == tmp_path / "cache" / "models" / "cyclegan" / "tiny_horse2zebra"
    assert (folder / "tiny_horse2zebra.pth").is_file()
    assert json.loads((folder / "source.json").read_text())["url"] == f"{server.url}/cyclegan/tiny_horse2zebra.pth"
    generator, recipe, _ = load_generator(folder)
    assert (str(recipe.data.root), recipe.data.direction) == ("data/cyclegan/horse2zebra", "AtoB")
    assert "CycleGAN reference's published tiny_horse2zebra generator" in recipe.description
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(generator.eval()(x), published_cyclegan(x), atol=1e-5, rtol=0)
    assert ensure_model("cyclegan/tiny_horse2zebra") == folder and len(server.ranges) == 1


def test_i2i_load_by_name_at_any_size(published_cyclegan, one_torch_thread):
    import i2i

    translator = i2i.load("cyclegan/tiny_horse2zebra", device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (30, 42, 3), dtype=np.uint8)  # padded to a multiple of 4
    assert translator(image).shape == (30, 42, 3)
