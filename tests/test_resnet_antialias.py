"""The ResNet generator's CUT form (``antialias: true``) and ``encode``, checked against
the published description of CUT's generator: the layer order of its Sequential, the
blur filters, the parameter count, and the layers its PatchNCE loss reads (0, 4, 8, 12, 16)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from i2i.models.resnet import BlurDown, BlurUp, ResnetBlock, ResnetGenerator, ResnetParams

CUT_NCE_LAYERS = [0, 4, 8, 12, 16]


def test_cut_generator_has_the_reference_layout_and_count():
    with torch.device("meta"):
        cut = ResnetGenerator(ResnetParams(antialias=True))
    assert sum(p.numel() for p in cut.parameters()) == 11_378_179
    down = ["ReflectionPad2d", "Conv2d", "InstanceNorm2d", "ReLU"] + ["Conv2d", "InstanceNorm2d", "ReLU", "BlurDown"] * 2
    up = ["BlurUp", "Conv2d", "InstanceNorm2d", "ReLU"] * 2 + ["ReflectionPad2d", "Conv2d", "Tanh"]
    assert [type(m).__name__ for m in cut.model] == down + ["ResnetBlock"] * 9 + up
    convs = [m for m in cut.model if isinstance(m, nn.Conv2d)]
    assert [c.stride for c in convs] == [(1, 1)] * len(convs), "CUT blurs instead of striding"
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in cut.modules())
    assert [type(cut.model[i]).__name__ for i in CUT_NCE_LAYERS] == ["ReflectionPad2d", "Conv2d", "Conv2d", "ResnetBlock", "ResnetBlock"]


def test_blur_down_is_the_binomial_filter_with_stride_two():
    x = torch.randn(2, 3, 10, 8)
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    taps = [1, 2, 1]
    expected = sum(
        taps[a] * taps[b] * padded[:, :, a : a + 10 : 2, b : b + 8 : 2] for a in range(3) for b in range(3)
    ) / 16
    assert torch.allclose(BlurDown(3)(x), expected, atol=1e-6)


def test_blur_up_is_bilinear_doubling():
    """A [1, 3, 3, 1] transposed filter with stride 2 puts every output pixel at 1/4 and 3/4
    between its two nearest inputs, and replication padding holds the border: bilinear
    interpolation with half-pixel centres."""
    x = torch.randn(2, 3, 5, 7)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(BlurUp(3)(x), bilinear, atol=1e-6)


def test_the_filters_are_constants_not_weights():
    plain, cut = ResnetGenerator(ResnetParams(ngf=4, n_blocks=2)), ResnetGenerator(ResnetParams(ngf=4, n_blocks=2, antialias=True))
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in cut.parameters())
    assert not any("kernel" in key for key in cut.state_dict())
    assert cut(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("antialias", [False, True])
def test_encode_returns_the_outputs_of_the_chosen_layers(antialias):
    torch.manual_seed(0)
    generator = ResnetGenerator(ResnetParams(ngf=4, n_blocks=9, antialias=antialias)).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    expected, out = [], x
    for layer in generator.model:
        out = layer(out)
        expected.append(out.clone())
    layers = [16, 0, 4, 8, 12]  # any order; the outputs follow it
    assert all(torch.equal(got, expected[i]) for got, i in zip(generator.encode(x, layers), layers))


def test_encode_stops_at_the_deepest_layer_and_keeps_outputs_before_in_place_relus():
    generator = ResnetGenerator(ResnetParams(ngf=4, n_blocks=9, antialias=True))
    ran = []
    for index, layer in enumerate(generator.model):
        layer.register_forward_hook(lambda *_, index=index: ran.append(index))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    norm_out, after_relu = generator.encode(x, [2, 3])
    assert ran == [0, 1, 2, 3]
    assert (norm_out < 0).any() and torch.equal(after_relu, norm_out.clamp(min=0))
    assert isinstance(generator.model[12], ResnetBlock)
    with pytest.raises(ValueError, match="0..31"):
        generator.encode(x, [32])
