"""CUT as its authors publish it: the anti-aliased PatchGAN, the decay-epoch data and the
authors' pretrained generators (``i2i import-weights`` and the ``cut/`` catalogue entries).

The ``Reference*`` modules below are written from the published description of CUT's code
(taesungp/contrastive-unpaired-translation, ``models/networks.py``): a ``Downsample`` pads by
reflection (1 each side), convolves each channel with the outer product of [1, 2, 1] over 16
at stride 2 and keeps that filter as a saved buffer ``filt``; an ``Upsample`` pads by
replication (1), convolves transposed with the outer product of [1, 3, 3, 1] over 16 times 4 at
stride 2 and padding 2, keeps rows and columns 1 .. 2H, and saves ``filt`` too. Their PatchGAN
(``NLayerDiscriminator``, ``no_antialias=False``): conv 4x4 stride 1 pad 1, LeakyReLU 0.2,
Downsample; per further strided layer: conv 4x4 stride 1 pad 1 (no bias under batch norm),
norm, LeakyReLU, Downsample; then conv 4x4 stride 1 to 8x at most, norm, LeakyReLU, and a 4x4
conv to one channel. Their ResNet generator: CycleGAN's, with each stride-2 conv as conv
stride 1, norm, ReLU, Downsample and each transposed conv as Upsample, conv 3x3 stride 1, norm, ReLU.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from conftest import tiny_recipe
from i2i.engine.inference import load_generator
from i2i.model_catalogue import MODELS, ModelEntry, ensure_model, model_recipe, source_url
from i2i.models.patchgan import PatchGANDiscriminator, PatchGANParams
from i2i.recipe import Recipe, RecipeError, shipped_recipes
from i2i.reference_weights import WeightsError, import_reference_weights
from test_cyclegan_weights import ReferenceResnetBlock, random_weights
from test_download import server  # noqa: F401  (the loopback server fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def binomial(taps: list[float]) -> torch.Tensor:
    row = torch.tensor(taps)
    return torch.outer(row, row) / row.sum() ** 2


class ReferenceDownsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("filt", binomial([1.0, 2.0, 1.0])[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


class ReferenceUpsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("filt", 4 * binomial([1.0, 3.0, 3.0, 1.0])[None, None].repeat(channels, 1, 1, 1))

    def forward(self, x):
        out = F.conv_transpose2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), self.filt, stride=2, padding=2, groups=x.shape[1])
        return out[:, :, 1:-1, 1:-1]


class ReferenceDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ndf, 4, 1, 1), nn.LeakyReLU(0.2, True), ReferenceDownsample(ndf)]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                       ReferenceDownsample(ndf * mult)]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, 1, 1), nn.InstanceNorm2d(ndf * mult), nn.LeakyReLU(0.2, True),
                   nn.Conv2d(ndf * mult, 1, 4, 1, 1)]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class ReferenceCutResnet(nn.Module):
    def __init__(self, ngf: int = 4, n_blocks: int = 9):
        super().__init__()
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for mult in (1, 2):
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, 1, 1), nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True),
                       ReferenceDownsample(ngf * mult * 2)]
        layers += [ReferenceResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [ReferenceUpsample(ngf * mult), nn.Conv2d(ngf * mult, ngf * mult // 2, 3, 1, 1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


def random_parameters(net: nn.Module, seed: int = 0) -> nn.Module:
    """Weights far from the initialisation (the blur buffers stay the published filters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return net


# -- the anti-aliased PatchGAN -----------------------------------------------------------------
def test_antialiased_patchgan_is_the_published_one():
    reference = random_parameters(ReferenceDiscriminator(3, 8, 3))
    ours = PatchGANDiscriminator(PatchGANParams(ndf=8, n_layers=3, norm="instance", antialias=True), in_channels=3)
    assert [type(m).__name__ for m in ours.model] == [
        "Conv2d", "LeakyReLU", "BlurDown", *["Conv2d", "InstanceNorm2d", "LeakyReLU", "BlurDown"] * 2,
        "Conv2d", "InstanceNorm2d", "LeakyReLU", "Conv2d"]
    parameters = dict(reference.named_parameters())
    ours.load_state_dict({key: parameters[key] for key in ours.state_dict()})  # the same names, blur buffers aside
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-5, rtol=0)


def test_antialias_keeps_the_parameter_count_and_the_output_size():
    with torch.device("meta"):
        plain, blurred = (PatchGANDiscriminator(PatchGANParams(norm="instance", antialias=a), in_channels=3)
                          for a in (False, True))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in blurred.parameters()) == 2_764_737
    small = [PatchGANDiscriminator(PatchGANParams(ndf=4, norm="instance", antialias=a), in_channels=3) for a in (False, True)]
    x = torch.rand(1, 3, 64, 64)
    assert small[0](x).shape == small[1](x).shape == (1, 1, 6, 6)


@pytest.mark.parametrize("discriminator", [
    {"name": "patchgan", "params": {"n_layers": 0, "antialias": True}},
    {"name": "pixelgan", "params": {"antialias": True}},
], ids=["no strided layer", "pixelgan"])
def test_antialias_where_a_discriminator_cannot_take_it_is_one_line(discriminator):
    with pytest.raises(RecipeError) as error:
        Recipe.from_dict(tiny_recipe(model={"generator": tiny_recipe()["model"]["generator"], "discriminator": discriminator}))
    problems = str(error.value).splitlines()[1:]  # under the "invalid recipe" heading: one problem
    assert len(problems) == 1 and "model.discriminator.params" in problems[0], problems


@pytest.mark.parametrize("name", ["cut_horse2zebra", "fastcut_horse2zebra"])
def test_the_cut_recipes_use_the_published_discriminator_and_decay_data(name):
    if not (shipped_recipes() / f"{name}.yaml").is_file():
        pytest.skip(f"recipes/{name}.yaml is not in this checkout")
    recipe = Recipe.from_file(name)
    assert recipe.model.discriminator.params.antialias is True
    assert recipe.data.decay_load_size == recipe.data.crop_size == 256


def test_the_cyclegan_recipes_keep_the_reference_loader():
    for name in ("cyclegan_horse2zebra", "cyclegan_maps"):
        if (shipped_recipes() / f"{name}.yaml").is_file():
            recipe = Recipe.from_file(name)
            assert recipe.data.decay_load_size is None and not recipe.model.discriminator.params.antialias, name


# -- the authors' generators ---------------------------------------------------------------------
def cut_recipe(n_blocks: int = 9, ngf: int = 4) -> Recipe:
    params = {"n_blocks": n_blocks, "ngf": ngf, "norm": "instance", "antialias": True}
    return Recipe.from_dict(tiny_recipe(model={"generator": {"name": "resnet", "params": params}}), "cut test recipe")


def test_the_published_keys_and_blur_buffers():
    state = ReferenceCutResnet(64, 9).state_dict()
    blurs = {key: tuple(t.shape) for key, t in state.items() if key.endswith(".filt")}
    assert blurs == {"model.7.filt": (128, 1, 3, 3), "model.11.filt": (256, 1, 3, 3),
                     "model.21.filt": (256, 1, 4, 4), "model.25.filt": (128, 1, 4, 4)}
    assert sum(t.numel() for k, t in state.items() if not k.endswith(".filt")) == 11_378_179
    assert {k: tuple(state[k].shape) for k in ("model.12.conv_block.1.weight", "model.22.weight", "model.30.bias")} == {
        "model.12.conv_block.1.weight": (256, 256, 3, 3), "model.22.weight": (128, 256, 3, 3), "model.30.bias": (3,)}


@pytest.mark.parametrize("n_blocks", [9, 6])
def test_imported_cut_generator_gives_the_reference_output(tmp_path, n_blocks):
    reference = random_parameters(ReferenceCutResnet(4, n_blocks)).eval()
    file = tmp_path / "latest_net_G.pth"
    torch.save(reference.state_dict(), file)
    folder = import_reference_weights(file, cut_recipe(n_blocks), tmp_path / "out")
    ours, recipe, metadata = load_generator(folder)
    assert recipe.model.generator.params.antialias and metadata["imported_from"] == "latest_net_G.pth"
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(ours.eval()(x), reference(x), atol=1e-5, rtol=0)


def refused(state: dict, recipe: Recipe, tmp_path: Path) -> str:
    file = tmp_path / "latest_net_G.pth"
    torch.save(state, file)
    with pytest.raises(WeightsError) as error:
        import_reference_weights(file, recipe, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing is written on failure"
    message = str(error.value)
    assert "\n" not in message, message
    return message


def test_a_missing_blur_buffer_is_named(tmp_path):
    state = ReferenceCutResnet(4, 6).state_dict()
    del state["model.11.filt"]
    assert "missing model.11.filt (16, 1, 3, 3)" in refused(state, cut_recipe(6), tmp_path)


def test_an_extra_blur_buffer_is_named(tmp_path):
    state = ReferenceCutResnet(4, 6).state_dict()
    state["model.4.filt"] = torch.zeros(8, 1, 3, 3)
    assert "unexpected model.4.filt (8, 1, 3, 3)" in refused(state, cut_recipe(6), tmp_path)


def test_a_blur_buffer_with_another_filter_is_refused(tmp_path):
    state = ReferenceCutResnet(4, 6).state_dict()
    state["model.7.filt"] = torch.full((8, 1, 3, 3), 1 / 9)
    assert "model.7.filt is not CUT's fixed binomial blur" in refused(state, cut_recipe(6), tmp_path)


def test_a_resnet6_file_under_a_resnet9_recipe_names_the_first_missing_block(tmp_path):
    message = refused(ReferenceCutResnet(4, 6).state_dict(), cut_recipe(9), tmp_path)
    assert "does not fit the CUT ResNet" in message
    assert "model.18.conv_block.1.weight" in message and "more mismatched tensors" in message


def test_a_cyclegan_file_under_a_cut_recipe_lacks_the_blurs(tmp_path):
    from test_cyclegan_weights import ReferenceResnet

    message = refused(ReferenceResnet(3, 3, 4, 6).state_dict(), cut_recipe(6), tmp_path)
    assert "model.4.weight has shape (8, 4, 3, 3)" not in message  # same shape: stride differs, not the tensor
    assert "missing model.7.filt" in message or "unexpected model.7.weight" in message, message


# -- the catalogue -------------------------------------------------------------------------------------
SIX = ["horse2zebra_cut", "horse2zebra_fastcut", "cat2dog_cut", "cat2dog_fastcut", "cityscapes_cut", "cityscapes_fastcut"]


def test_the_catalogue_holds_the_six_published_cut_generators(monkeypatch):
    monkeypatch.delenv("I2I_MODELS_URL", raising=False)
    assert [name for name in MODELS if name.startswith("cut/")] == [f"cut/{name}" for name in SIX]
    assert {source_url(MODELS[f"cut/{name}"]) for name in SIX} == {"http://efrosgans.eecs.berkeley.edu/CUT/pretrained_models.tar"}
    assert MODELS["cut/cityscapes_cut"].direction == "BtoA", "the authors' launcher: labels -> photo"
    assert MODELS["cut/horse2zebra_fastcut"].recipe == "fastcut_horse2zebra"
    monkeypatch.setenv("I2I_MODELS_URL", "http://mirror/models/")
    assert source_url(MODELS["cut/cat2dog_cut"]) == "http://mirror/models/cut/pretrained_models.tar"


def test_the_recipe_they_travel_with_has_the_anti_aliased_resnet_9blocks():
    if not (shipped_recipes() / "cut_horse2zebra.yaml").is_file():
        pytest.skip("recipes/cut_horse2zebra.yaml is not in this checkout")
    recipe = model_recipe(MODELS["cut/horse2zebra_cut"])
    params = recipe.model.generator.params
    assert (params.n_blocks, params.ngf, params.antialias) == (9, 64, True)
    assert "CUT reference's published horse2zebra_cut generator" in recipe.description


def archive(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buffer.getvalue()


@pytest.fixture
def published_cut(server, tmp_path, monkeypatch):
    """Two small CUT generators in one archive, laid out as the authors' pretrained_models.tar,
    on the loopback server, with their catalogue entries and a cache in tmp_path."""
    references = {}
    members = {}
    for name, seed in (("tiny_cut", 1), ("tiny_fastcut", 2)):
        references[name] = random_parameters(ReferenceCutResnet(4, 6), seed).eval()
        saved = io.BytesIO()
        torch.save(references[name].state_dict(), saved)
        members[f"checkpoints/{name}_pretrained/latest_net_G.pth"] = saved.getvalue()
    members["checkpoints/tiny_cut_pretrained/latest_net_D.pth"] = b"not a generator"
    server.publish("cut/pretrained_models.tar", archive(members))
    recipe = tmp_path / "tiny_cut.yaml"
    recipe.write_text(yaml.safe_dump(cut_recipe(6).model_dump(mode="json")))
    for name in references:
        entry = ModelEntry(f"cut/{name}", "horse -> zebra (small)", str(recipe), "AtoB", "data/cyclegan/horse2zebra")
        monkeypatch.setitem(MODELS, entry.name, entry)
    monkeypatch.setenv("I2I_MODELS_URL", server.url)
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    return references


def test_the_archive_is_fetched_once_and_each_generator_taken_from_it(published_cut, server, tmp_path):
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    for name, reference in published_cut.items():
        folder = ensure_model(f"cut/{name}")
        assert folder == tmp_path / "cache" / "models" / "cut" / name
        assert json.loads((folder / "source.json").read_text())["url"] == f"{server.url}/cut/pretrained_models.tar"
        generator, recipe, _ = load_generator(folder)
        assert recipe.model.generator.params.antialias
        with torch.no_grad():
            assert torch.allclose(generator.eval()(x), reference(x), atol=1e-5, rtol=0)
    assert len(server.ranges) == 1, "one download serves both"
    assert (tmp_path / "cache" / "models" / "cut" / "pretrained_models.tar").is_file()


def test_a_name_the_archive_lacks_is_one_clear_error(published_cut, monkeypatch, tmp_path):
    entry = ModelEntry("cut/tiny_missing", "nothing", str(tmp_path / "tiny_cut.yaml"), "AtoB")
    monkeypatch.setitem(MODELS, entry.name, entry)
    with pytest.raises(Exception, match=r"holds no \.\.\./tiny_missing_pretrained/latest_net_G\.pth"):
        ensure_model("cut/tiny_missing")
    assert not (tmp_path / "cache" / "models" / "cut" / "tiny_missing" / "generator.safetensors").exists()
