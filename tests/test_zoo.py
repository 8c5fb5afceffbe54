"""The built-in zoo: ResNet generator, timm U-Net, multi-scale / pixel discriminators, norm options."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from i2i.recipe import Recipe, RecipeError
from i2i.errors import I2IError
from i2i.registry import DISCRIMINATORS, GENERATORS

from conftest import tiny_recipe


def count(model):
    return sum(p.numel() for p in model.parameters())


def resnet(**params):
    return GENERATORS.build("resnet", params, in_channels=3, out_channels=3)


def test_resnet_9blocks_matches_the_reference_parameter_count():
    # c7s1-64, d128, d256, 9 x R256, u128, u64, c7s1-3; instance norm (no affine) keeps conv biases.
    assert count(resnet()) == 11_378_179
    # Each block is two 256->256 3x3 convs with bias: 2 * (256*256*9 + 256).
    assert count(resnet()) - count(resnet(n_blocks=6)) == 3 * 2 * (256 * 256 * 9 + 256)


def test_resnet_layout():
    g = resnet(n_blocks=6, ngf=8)
    pads = [m for m in g.modules() if isinstance(m, nn.ReflectionPad2d)]
    assert [p.padding for p in pads] == [(3, 3, 3, 3)] + [(1, 1, 1, 1)] * 12 + [(3, 3, 3, 3)]
    strided = [m for m in g.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) and m.stride == (2, 2)]
    assert [type(m) for m in strided] == [nn.Conv2d] * 2 + [nn.ConvTranspose2d] * 2
    assert not any(isinstance(m, nn.Dropout) for m in g.modules())
    assert sum(isinstance(m, nn.Dropout) for m in resnet(n_blocks=2, ngf=8, dropout=0.5).modules()) == 2
    y = g(torch.randn(1, 3, 36, 36))
    assert y.shape == (1, 3, 36, 36) and y.abs().max() <= 1


@pytest.mark.parametrize("padding,layer", [("replicate", nn.ReplicationPad2d), ("zero", None)])
def test_resnet_block_padding(padding, layer):
    g = resnet(n_blocks=1, ngf=4, padding=padding)
    block_pads = [m for m in g.model[10].modules() if isinstance(m, (nn.ReflectionPad2d, nn.ReplicationPad2d))]
    assert [type(m) for m in block_pads] == ([layer] * 2 if layer else [])
    assert g(torch.randn(1, 3, 16, 16)).shape == (1, 3, 16, 16)


NETWORKS = [
    (GENERATORS, "resnet", {"in_channels": 3, "out_channels": 3}),
    (GENERATORS, "unet", {"in_channels": 3, "out_channels": 3}),
    (DISCRIMINATORS, "patchgan", {"in_channels": 6}),
    (DISCRIMINATORS, "multiscale", {"in_channels": 6}),
]


@pytest.mark.parametrize("registry,name,channels", NETWORKS, ids=[n for _, n, _ in NETWORKS])
@pytest.mark.parametrize("norm,layer", [("batch", nn.BatchNorm2d), ("instance", nn.InstanceNorm2d), ("none", None)])
def test_norm_options(registry, name, channels, norm, layer):
    model = registry.build(name, {**registry.get(name).example, "norm": norm}, **channels)
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d))]
    if layer is None:
        assert norms == []
    else:
        assert norms and all(type(m) is layer for m in norms)
        assert all(not m.affine for m in norms if layer is nn.InstanceNorm2d)
    # A conv feeding batch norm has no bias (the norm's shift replaces it).
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert any(m.bias is None for m in convs) == (norm == "batch")


@pytest.mark.parametrize("name", ["patchgan", "multiscale"])
def test_spectral_norm_bounds_every_conv(name):
    d = DISCRIMINATORS.build(name, {**DISCRIMINATORS.get(name).example, "spectral_norm": True}, in_channels=6)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    with torch.no_grad():
        for _ in range(30):  # each training-mode forward runs one power iteration
            d(torch.randn(1, 6, 32, 32))
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)


def test_multiscale_runs_separate_patchgans_on_pooled_inputs():
    d = DISCRIMINATORS.build("multiscale", {"ndf": 4, "n_layers": 3, "num_scales": 3, "norm": "none"}, in_channels=6)
    x = torch.randn(2, 6, 128, 128)
    logits = d(x)
    assert [tuple(t.shape) for t in logits] == [(2, 1, 14, 14), (2, 1, 6, 6), (2, 1, 2, 2)]
    pooled = nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    assert torch.allclose(logits[1], d.scales[1](pooled))
    first, second = (list(s.parameters())[0] for s in d.scales[:2])
    assert first.data_ptr() != second.data_ptr()


def test_pixelgan_judges_each_pixel():
    d = DISCRIMINATORS.build("pixelgan", {**DISCRIMINATORS.get("pixelgan").example, "norm": "none"}, in_channels=6)
    x = torch.randn(1, 6, 8, 8, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 8, 8)
    out[0, 0, 3, 5].backward()
    assert x.grad[0].abs().sum(0).nonzero().tolist() == [[3, 5]]


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0", "convnext_atto"])
def test_timm_unet_backbones(backbone):
    """Feature strides differ (convnext starts at 4); odd sizes work since the decoder
    upsamples to each skip's size."""
    g = GENERATORS.build("timm_unet", {"backbone": backbone, "decoder_width": 4}, in_channels=1, out_channels=3)
    y = g(torch.randn(2, 1, 40, 40))
    assert y.shape == (2, 3, 40, 40) and y.abs().max() <= 1
    y.mean().backward()
    assert all(p.grad is not None for p in g.encoder.parameters() if p.requires_grad)


@pytest.mark.parametrize("in_channels", [3, 1])
def test_timm_unet_loads_weights_from_a_local_file(tmp_path, in_channels):
    import timm

    source = timm.create_model("test_resnet", pretrained=False)
    weights = tmp_path / "test_resnet.safetensors"
    save_file(source.state_dict(), weights)
    g = GENERATORS.build(
        "timm_unet", {"backbone": "test_resnet", "pretrained_path": str(weights)}, in_channels=in_channels, out_channels=3
    )
    saved, loaded = source.state_dict(), g.encoder.state_dict()
    assert set(loaded) <= set(saved)  # the encoder is the classifier minus its head
    stem = next(iter(loaded))
    for key in loaded:
        if key == stem and in_channels == 1:
            # timm adapts a 3-channel stem to one channel by summing over the inputs.
            assert torch.allclose(loaded[key], saved[key].sum(1, keepdim=True))
        else:
            assert torch.equal(loaded[key], saved[key]), key


def test_timm_unet_params_are_checked_at_validation(tmp_path):
    bad = {"name": "timm_unet", "params": {"backbone": "resnet_35", "pretrained_path": str(tmp_path / "none.pth")}}
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict(tiny_recipe(model={"generator": bad}))
    message = str(caught.value)
    assert "model.generator.params.backbone" in message and "did you mean" in message
    assert "model.generator.params.pretrained_path" in message and "none.pth" in message


def test_timm_unet_names_a_weights_file_that_does_not_fit(tmp_path):
    import timm

    weights = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_efficientnet", pretrained=False).state_dict(), weights)
    with pytest.raises(I2IError, match=r"cannot build backbone 'test_resnet' from .*other.safetensors"):
        GENERATORS.build("timm_unet", {"backbone": "test_resnet", "pretrained_path": str(weights)}, in_channels=3, out_channels=3)
