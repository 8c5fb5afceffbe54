"""The training components after pix2pix: two time-scales (TTUR), the R1 penalty, feature
matching, DiffAugment and the reconstruction-weight decay: their maths on tiny tensors, their
recipe errors, and tiny runs with all of them on (which resume exactly)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, RecipeError
from i2i.registry import LOSSES

from conftest import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def refused(match: str, **sections) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(tiny_recipe(**sections))


# -- two time-scales ----------------------------------------------------------------
def test_the_discriminator_learns_at_lr_times_the_ratio_all_through_the_schedule(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(train={"epochs": 1, "epochs_decay": 2, "lr": 1e-3, "d_lr_ratio": 4.0,
                                                 "engine": "reference"}))
    trainer = Trainer(recipe, run_dir=tmp_path)
    assert [g["lr"] for g in trainer.opt_d.param_groups] == [4e-3]
    for epoch, factor in ((0, 1.0), (1, 1 - 1 / 3), (2, 1 - 2 / 3)):
        trainer.set_epoch(epoch)
        assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)
        assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(4e-3 * factor)


@pytest.mark.parametrize("ratio,message", [
    (0, r"train.d_lr_ratio: Input should be greater than 0 \(got 0\)"),
    (-1.5, r"train.d_lr_ratio: Input should be greater than 0"),
    (".inf", r"train.d_lr_ratio: Input should be a finite number"),
    (1e5, r"train: Value error, lr x d_lr_ratio = 20: the discriminator's learning rate is at most 1"),
])
def test_a_bad_lr_ratio_is_one_line(ratio, message):
    import yaml

    refused(message, train={"d_lr_ratio": yaml.safe_load(str(ratio))})


# -- R1 -------------------------------------------------------------------------------
class LinearCritic(nn.Module):
    """Logits = a 1x1 conv of the input, at ``scales`` scales (the same weights each, on the
    input average-pooled 0, 1, ... times): each sample's mean logit has the gradient w_c / HW."""

    def __init__(self, weights: list[float], scales: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(len(weights), 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights).view(1, -1, 1, 1))
        self.scales = scales

    def forward(self, x):
        maps = [self.conv(nn.functional.avg_pool2d(x, 2**i)) for i in range(self.scales)]
        return maps if self.scales > 1 else maps[0]


@pytest.mark.parametrize("scales", [1, 2])
def test_r1_is_gamma_over_two_times_the_squared_gradient_norm(scales):
    weights, side, gamma = [0.5, -2.0, 1.0], 4, 3.0
    real = torch.randn(2, 3, side, side)
    penalty = LOSSES.build("gan", {"r1_gamma": gamma}).gradient_penalty(LinearCritic(weights, scales), real, -real)
    # d mean_hw(w . x) / dx = w / HW at every pixel, so |grad|^2 = |w|^2 / HW per sample; average
    # pooling leaves the mean, so every scale has the same gradient.
    assert penalty.item() == pytest.approx(gamma / 2 * sum(w * w for w in weights) / side**2, rel=1e-6)


def test_r1_trains_the_discriminator_and_runs_in_float32_under_autocast():
    critic = LinearCritic([0.5, -2.0, 1.0])
    loss = LOSSES.build("gan", {"r1_gamma": 2.0})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = loss.gradient_penalty(critic, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    assert penalty.dtype == torch.float32 and penalty.item() == pytest.approx(5.25 / 16, rel=1e-6)
    penalty.backward()  # d/dw of gamma/2 |w|^2 / HW
    assert torch.allclose(critic.conv.weight.grad.flatten(), 2.0 * torch.tensor([0.5, -2.0, 1.0]) / 16)


def test_r1_is_off_by_default_and_adds_to_wgan_gp():
    critic, real, fake = LinearCritic([1.0, 1.0, 1.0]), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert LOSSES.build("gan", {}).gradient_penalty(critic, real, fake) is None
    torch.manual_seed(0)
    wgan = LOSSES.build("gan", {"mode": "wgan-gp"}).gradient_penalty(critic, real, fake)
    torch.manual_seed(0)
    both = LOSSES.build("gan", {"mode": "wgan-gp", "r1_gamma": 1.0}).gradient_penalty(critic, real, fake)
    assert both.item() == pytest.approx(wgan.item() + 0.5 * 3 / 16, rel=1e-6)


@pytest.mark.parametrize("gamma,message", [(-1, "greater than or equal to 0"), (".nan", "finite number")])
def test_a_bad_r1_gamma_is_one_line(gamma, message):
    import yaml

    refused(rf"losses.0.params.r1_gamma: Input should be (a )?{message}",
            losses=[{"name": "gan", "params": {"r1_gamma": yaml.safe_load(gamma) if isinstance(gamma, str) else gamma}},
                    {"name": "l1", "weight": 100.0}])


@pytest.mark.parametrize("method,discriminators", [
    ({"name": "cyclegan", "params": {"pool_size": 2}}, ["discriminator", "discriminator_a"]),
    ({"name": "cut", "params": {"nce_layers": [0, 4], "num_patches": 8, "head_channels": 4}}, ["discriminator"]),
])
def test_every_method_adds_the_penalty_of_each_discriminator(method, discriminators, fake_data_root, tmp_path, monkeypatch):
    from i2i.losses import GANLoss

    seen = []
    r1 = GANLoss._r1
    monkeypatch.setattr(GANLoss, "_r1", lambda self, d, real: seen.append(d) or r1(self, d, real))
    recipe = Recipe.from_dict(tiny_recipe(
        method=method,
        model={"generator": {"name": "resnet", "params": {"ngf": 4, "n_blocks": 1, "antialias": method["name"] == "cut"}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}}},
        losses=[{"name": "gan", "params": {"mode": "lsgan", "r1_gamma": 1.0}}],
        data={"dataset": {"name": "unaligned"}, "root": str(fake_data_root)},
        train={"max_steps": 1, "tensorboard": False},
    ))
    trainer = Trainer(recipe, run_dir=tmp_path)
    trainer.fit()
    assert seen == [trainer.networks[name] for name in discriminators]
