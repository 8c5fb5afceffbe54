"""Training methods as components: the pix2pix step moved out of the trainer unchanged."""

from __future__ import annotations

import contextlib

import pytest
import torch

from conftest import tiny_recipe
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe
from i2i.registry import METHODS


def frozen_pix2pix_step(trainer: Trainer, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Trainer.train_step`` as it was before methods became components (commit aafe222),
    with the trainer's attributes spelled out: the moved step must match it bit for bit."""
    from i2i.methods.base import build_losses

    (gan_loss, gan_weight), reconstruction = build_losses(trainer.recipe)
    G, D, discriminator = trainer.generator, trainer.discriminator, trainer.discriminator
    amp = trainer.amp_dtype
    autocast = contextlib.nullcontext if amp == torch.float32 else (lambda: torch.autocast("cpu", dtype=amp))
    opt_g, opt_d, scaler = trainer.opt_g, trainer.opt_d, trainer.scaler
    with autocast():
        fake_b = G(real_a)
    discriminator.requires_grad_(True)
    opt_d.zero_grad(set_to_none=True)
    with autocast():
        fake_pair = torch.cat([real_a, fake_b.detach()], 1)
        real_pair = torch.cat([real_a, real_b], 1)
        d_real, d_fake = gan_loss.discriminator_loss(D(real_pair), D(fake_pair))
        loss_d = 0.5 * (d_real + d_fake) * gan_weight
    scaler.scale(loss_d).backward()
    scaler.step(opt_d)
    discriminator.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    with autocast():
        g_gan = gan_loss.generator_loss(D(torch.cat([real_a, fake_b], 1))) * gan_weight
        terms = {f"G_{name}": weight * loss(fake_b.float(), real_b) for name, loss, weight in reconstruction}
        loss_g = g_gan + sum(terms.values())
    scaler.scale(loss_g).backward()
    scaler.step(opt_g)
    scaler.update()
    return {"G_GAN": g_gan.detach(), **{k: v.detach() for k, v in terms.items()},
            "D_real": d_real.detach(), "D_fake": d_fake.detach()}


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_pix2pix_method_is_the_step_before_the_move(engine, tmp_path, one_torch_thread):
    recipe = Recipe.from_dict(tiny_recipe(train={"engine": engine, "engine_probe": False, "compile": False}))
    moved, frozen = (Trainer(recipe, run_dir=tmp_path / name) for name in ("moved", "frozen"))
    assert type(moved.method).__name__ == "Pix2Pix"
    batches = [(torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1) for _ in range(3)]
    for real_a, real_b in batches:
        torch.manual_seed(7)  # dropout draws from the global RNG: the same stream for both
        ours = moved.train_step(real_a, real_b)
        torch.manual_seed(7)
        theirs = frozen_pix2pix_step(frozen, real_a, real_b)
        assert ours.keys() == theirs.keys()
        for name in ours:
            assert torch.equal(ours[name], theirs[name]), f"{name}: {ours[name]} != {theirs[name]}"
    for (name, a), b in zip(moved.generator.state_dict().items(), frozen.generator.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_recipe_without_a_method_is_pix2pix():
    recipe = Recipe.from_dict(tiny_recipe())
    assert recipe.method.name == "pix2pix"
    assert "method:\n  name: pix2pix" in recipe.to_yaml()


def test_unknown_method_names_the_path_and_suggests():
    from i2i.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"method.name: unknown method 'pix2px'. Did you mean 'pix2pix'"):
        Recipe.from_dict(tiny_recipe(method={"name": "pix2px"}))


def test_methods_are_listed():
    assert "pix2pix" in METHODS.list()
