"""Every registered component against its contract (i2i.testing), and the reference networks' layouts."""

import pytest
import torch

from i2i.registry import DISCRIMINATORS, GENERATORS
from i2i.testing import contract_tests

# Built-ins and installed plugins alike, each built from its registration's example params:
# a new component is covered by registering it.
test_contract = contract_tests()


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
