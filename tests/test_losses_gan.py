"""The GAN loss modes on known logits, the WGAN-GP penalty on a toy critic, and multi-scale lists."""

import math

import pytest
import torch
from torch import nn

from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe
from i2i.registry import DISCRIMINATORS, LOSSES

from conftest import tiny_recipe


def gan(**params):
    return LOSSES.build("gan", params)


def full(value):
    return torch.full((2, 1, 3, 3), float(value))


def softplus(x):
    return math.log1p(math.exp(x))


@pytest.mark.parametrize(
    "mode,real,fake,d_real,d_fake,g",
    [
        # vanilla: BCE with logits, i.e. softplus(-x) against 1 and softplus(x) against 0
        ("vanilla", 2.0, -1.0, softplus(-2.0), softplus(-1.0), softplus(1.0)),
        ("lsgan", 0.5, 0.25, 0.25, 0.0625, 0.5625),
        ("hinge", 0.5, -0.5, 0.5, 0.5, 0.5),
        ("hinge", 2.0, -3.0, 0.0, 0.0, 3.0),
        ("wgan-gp", 0.5, -0.5, -0.5, -0.5, 0.5),
    ],
)
def test_mode_values_on_known_logits(mode, real, fake, d_real, d_fake, g):
    loss = gan(mode=mode)
    got_real, got_fake = loss.discriminator_loss(full(real), full(fake))
    assert got_real.item() == pytest.approx(d_real, rel=1e-6)
    assert got_fake.item() == pytest.approx(d_fake, rel=1e-6)
    assert loss.generator_loss(full(fake)).item() == pytest.approx(g, rel=1e-6)


def test_lsgan_uses_the_labels():
    loss = gan(mode="lsgan", real_label=0.9, fake_label=0.1)
    got_real, got_fake = loss.discriminator_loss(full(0.9), full(0.3))
    assert got_real.item() == pytest.approx(0.0, abs=1e-7)
    assert got_fake.item() == pytest.approx(0.04, rel=1e-5)


@pytest.mark.parametrize("mode", ["vanilla", "lsgan", "hinge", "wgan-gp"])
def test_a_list_of_scales_is_averaged(mode):
    loss = gan(mode=mode)
    reals, fakes = [full(0.7), torch.randn(2, 1, 2, 2)], [full(-0.2), torch.randn(2, 1, 2, 2)]
    per_scale = [loss.discriminator_loss(r, f) for r, f in zip(reals, fakes)]
    got_real, got_fake = loss.discriminator_loss(reals, fakes)
    assert got_real.item() == pytest.approx(sum(t[0].item() for t in per_scale) / 2, rel=1e-6)
    assert got_fake.item() == pytest.approx(sum(t[1].item() for t in per_scale) / 2, rel=1e-6)
    expected_g = sum(loss.generator_loss(f).item() for f in fakes) / 2
    assert loss.generator_loss(fakes).item() == pytest.approx(expected_g, rel=1e-6)


class LinearCritic(nn.Module):
    """D(x) = <w, x> per sample, so grad_x D = w everywhere: |grad| = |w| at any interpolate."""

    def __init__(self, norm: float, scales: tuple[float, ...] = ()):
        super().__init__()
        w = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0))
        self.w = nn.Parameter(w / w.norm() * norm)
        self.scales = scales

    def forward(self, x):
        score = (x * self.w).sum(dim=(1, 2, 3)).view(-1, 1, 1, 1)
        return [score * s for s in self.scales] if self.scales else score


def test_gradient_penalty_on_a_linear_critic():
    loss = gan(mode="wgan-gp", gp_weight=10.0)
    real, fake = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    critic = LinearCritic(norm=3.0)
    penalty = loss.gradient_penalty(critic, real, fake)
    assert penalty.item() == pytest.approx(10.0 * (3.0 - 1.0) ** 2, rel=1e-5)
    penalty.backward()  # the penalty trains the critic (second-order graph)
    assert critic.w.grad is not None and critic.w.grad.abs().sum() > 0


def test_gradient_penalty_averages_the_scales():
    loss = gan(mode="wgan-gp", gp_weight=1.0)
    real, fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    # Scales 1 and 2 average to a critic 1.5 times as steep: |grad| = 1.5 * 2.
    penalty = loss.gradient_penalty(LinearCritic(norm=2.0, scales=(1.0, 2.0)), real, fake)
    assert penalty.item() == pytest.approx((3.0 - 1.0) ** 2, rel=1e-5)


@pytest.mark.parametrize("mode,gp_weight", [("vanilla", 10.0), ("lsgan", 10.0), ("hinge", 10.0), ("wgan-gp", 0.0)])
def test_no_penalty_outside_wgan_gp(mode, gp_weight):
    assert gan(mode=mode, gp_weight=gp_weight).gradient_penalty(LinearCritic(1.0), torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)) is None


def test_trainer_steps_with_a_multiscale_critic_and_wgan_gp(tmp_path):
    recipe = tiny_recipe(
        model={"discriminator": {"name": "multiscale", "params": DISCRIMINATORS.get("multiscale").example}},
        losses=[{"name": "gan", "params": {"mode": "wgan-gp"}}, {"name": "l1", "weight": 100.0}],
    )
    recipe["train"].update(max_steps=2, batch_size=2)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path / "run")
    losses = trainer.fit()
    assert trainer.step == 2
    assert all(math.isfinite(v) for v in losses.values())
