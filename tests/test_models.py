"""Every registered network builds and runs forward at a small size (as timm's suite does)."""

import pytest
import torch

from i2i.registry import DISCRIMINATORS, GENERATORS

from conftest import SMALL_PARAMS, TINY_SIZE


@pytest.mark.parametrize("name", GENERATORS.list())
@pytest.mark.parametrize("channels", [(3, 3), (1, 3)])
def test_generator_forward(name, channels):
    in_ch, out_ch = channels
    model = GENERATORS.build(name, SMALL_PARAMS.get(name, {}), in_channels=in_ch, out_channels=out_ch)
    y = model(torch.randn(2, in_ch, TINY_SIZE, TINY_SIZE))
    assert y.shape == (2, out_ch, TINY_SIZE, TINY_SIZE)
    assert y.abs().max() <= 1.0  # tanh output range
    y.mean().backward()


@pytest.mark.parametrize("name", GENERATORS.list())
def test_generator_declares_the_size_multiple_it_needs(name):
    """``i2i translate`` pads inputs to ``size_multiple``: two neighbouring multiples (one an
    odd number of them, where a chain of stride-2 layers would round) keep their size."""
    model = GENERATORS.build(name, SMALL_PARAMS.get(name, {})).eval()
    multiple = model.size_multiple
    assert isinstance(multiple, int) and multiple >= 1
    smallest = multiple * -(-32 // multiple)  # room for the norms and paddings of tiny maps
    with torch.no_grad():
        for side in (smallest, smallest + multiple):
            assert model(torch.randn(1, 3, side, side)).shape[-2:] == (side, side)


@pytest.mark.parametrize("name", DISCRIMINATORS.list())
def test_discriminator_forward(name):
    model = DISCRIMINATORS.build(name, SMALL_PARAMS.get(name, {}), in_channels=6)
    output = model(torch.randn(2, 6, TINY_SIZE, TINY_SIZE))
    scales = output if isinstance(output, list) else [output]  # multi-scale: one logit map per scale
    assert scales and all(logits.dim() == 4 and logits.shape[:2] == (2, 1) for logits in scales)
    sum(logits.mean() for logits in scales).backward()


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_unet256_matches_the_reference_parameter_count():
    assert count(GENERATORS.build("unet", {}, in_channels=3, out_channels=3)) == 54_413_955


def test_patchgan70_matches_the_reference():
    d = DISCRIMINATORS.build("patchgan", {}, in_channels=6)
    assert count(d) == 2_768_705
    assert d(torch.randn(1, 6, 256, 256)).shape == (1, 1, 30, 30)


def test_unet_layer_layout_matches_reference():
    g = GENERATORS.build("unet", {}, in_channels=3, out_channels=3)
    convs = [m for m in g.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with_bias = [m for m in convs if m.bias is not None]
    assert len(convs) == 16 and with_bias == [g.up[0][1]]  # only the outermost transposed conv
    dropouts = [i for i, block in enumerate(g.up) if any(isinstance(m, torch.nn.Dropout) for m in block.modules())]
    assert dropouts == [4, 5, 6]  # the three 512-channel blocks below the innermost


def test_init_is_normal_002():
    g = GENERATORS.build("unet", {"ngf": 32}, in_channels=3, out_channels=3)
    weights = torch.cat([m.weight.flatten() for m in g.modules() if isinstance(m, torch.nn.Conv2d)])
    assert abs(weights.std().item() - 0.02) < 0.001 and abs(weights.mean().item()) < 0.001
    bn = torch.cat([m.weight for m in g.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    assert abs(bn.mean().item() - 1.0) < 0.01


@pytest.mark.parametrize("n_layers,receptive", [(1, 16), (3, 70), (5, 286)])
def test_patchgan_receptive_field(n_layers, receptive):
    """Gradient of the centre logit w.r.t. the input covers exactly the advertised patch."""
    d = DISCRIMINATORS.build("patchgan", {"n_layers": n_layers, "ndf": 4, "norm": "none"}, in_channels=1)
    x = torch.randn(1, 1, 2 * receptive, 2 * receptive, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = x.grad[0, 0].abs().sum(1).nonzero()
    assert rows.max() - rows.min() + 1 == receptive
