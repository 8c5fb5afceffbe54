"""CycleGAN (Zhu et al., ICCV 2017): two generators and a cycle-consistency loss, no pairs needed.

The step, as the reference's ``cycle_gan_model.py``: translate both ways and back; update
both generators (one Adam) on fooling both discriminators, the cycle losses
|G_ba(G(a)) - a| x lambda_a and |G(G_ba(b)) - b| x lambda_b, and the identity losses
|G(b) - b| and |G_ba(a) - a| x lambda x lambda_identity; then update both discriminators
(one Adam), each on real images against generated ones drawn from a history of 50.

Network names: ``generator`` (A -> B), ``generator_ba`` (B -> A), ``discriminator`` (judges
domain B: real B against G(a)), ``discriminator_a`` (judges domain A).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from i2i.contracts import LossWeight, Method, Params
from i2i.errors import I2IError
from i2i.methods.base import (
    add_gradient_penalty, build_discriminator, build_generator, build_losses, detached, refuse_reconstruction_losses,
)
from i2i.registry import METHODS


class ImagePool:
    """The reference's history of generated images (Shrivastava et al. 2017): until it holds
    ``size`` images each new one is stored and returned; afterwards, with probability 1/2,
    a stored image is returned and replaced by the new one. Its random draws come from
    torch's CPU generator, which a checkpoint saves, so a resumed run draws the same."""

    def __init__(self, size: int):
        self.size = size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images.detach()
        returned = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image)
                returned.append(image)
            elif torch.rand(()).item() > 0.5:
                slot = int(torch.randint(self.size, ()).item())
                returned.append(self.images[slot].clone())
                self.images[slot] = image
            else:
                returned.append(image)
        return torch.cat(returned)


class CycleGANParams(Params):
    lambda_a: LossWeight = Field(10.0, description="weight of the cycle loss A -> B -> A")
    lambda_b: LossWeight = Field(10.0, description="weight of the cycle loss B -> A -> B")
    lambda_identity: float = Field(
        0.5, ge=0, le=10, description="identity loss weight, as a fraction of lambda_a / lambda_b (0: none)"
    )
    pool_size: int = Field(50, ge=0, le=1000, description="generated images kept for the discriminators (0: none)")


@METHODS.register("cyclegan", params=CycleGANParams, example={"pool_size": 2})
class CycleGAN(Method):
    generator_side = ("generator", "generator_ba")
    discriminator_side = ("discriminator", "discriminator_a")
    directions = {"AtoB": "generator", "BtoA": "generator_ba"}
    graphable = False  # the image pools draw on the host

    params: CycleGANParams

    @classmethod
    def check_recipe(cls, params: Params, recipe: Any) -> list[str]:
        return refuse_reconstruction_losses(
            recipe, "cyclegan", "its cycle and identity losses (method.params lambda_a, lambda_b, lambda_identity)"
        )

    def build_networks(self, in_channels: int, out_channels: int) -> dict[str, nn.Module]:
        if self.params.lambda_identity > 0 and in_channels != out_channels:
            raise I2IError(f"cyclegan's identity loss needs as many input as output channels (here {in_channels} and "
                           f"{out_channels}); set method.params.lambda_identity: 0")
        model, recipe = self.recipe.model, self.recipe
        self.input_channels = {"generator": in_channels, "generator_ba": out_channels,
                               "discriminator": out_channels, "discriminator_a": in_channels}
        networks = {
            "generator": build_generator(recipe, model.generator, in_channels, out_channels),
            "generator_ba": build_generator(recipe, model.generator_ba or model.generator, out_channels, in_channels),
            "discriminator": build_discriminator(recipe, model.discriminator, out_channels),
            "discriminator_a": build_discriminator(recipe, model.discriminator_a or model.discriminator, in_channels),
        }
        (self.gan_loss, self.gan_weight), _ = build_losses(recipe)
        self.pools = {"fake_b": ImagePool(self.params.pool_size), "fake_a": ImagePool(self.params.pool_size)}
        return networks

    def bind(self, tools) -> None:
        super().bind(tools)
        self.gan_loss.to(tools.device)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        t, p = self.tools, self.params
        G_ab, G_ba = t.call["generator"], t.call["generator_ba"]
        with t.autocast():
            fake_b = G_ab(real_a)
            rec_a = G_ba(fake_b)
            fake_a = G_ba(real_b)
            rec_b = G_ab(fake_a)

        # 1. Generators: fool both discriminators, come back to where they started, leave targets alone.
        discriminators = [t.networks[name] for name in self.discriminator_side]
        for network in discriminators:
            network.requires_grad_(False)
        t.opt_g.zero_grad(set_to_none=True)
        with t.autocast():
            terms = {
                "G_GAN_b": self.gan_loss.generator_loss(t.call_frozen["discriminator"](fake_b)) * self.gan_weight,
                "G_GAN_a": self.gan_loss.generator_loss(t.call_frozen["discriminator_a"](fake_a)) * self.gan_weight,
                "cycle_a": F.l1_loss(rec_a.float(), real_a) * p.lambda_a,
                "cycle_b": F.l1_loss(rec_b.float(), real_b) * p.lambda_b,
            }
            if p.lambda_identity > 0:
                terms["idt_b"] = F.l1_loss(G_ab(real_b).float(), real_b) * p.lambda_b * p.lambda_identity
                terms["idt_a"] = F.l1_loss(G_ba(real_a).float(), real_a) * p.lambda_a * p.lambda_identity
            loss_g = sum(terms.values())
        t.scaler.scale(loss_g).backward()
        t.scaler.step(t.opt_g)

        # 2. Discriminators: real images against generated ones from the history, each loss halved.
        for network in discriminators:
            network.requires_grad_(True)
        t.opt_d.zero_grad(set_to_none=True)
        with t.autocast():
            seen_b = self.pools["fake_b"].query(fake_b)
            d_real_b, d_fake_b = self.discriminator_terms("discriminator", real_b, seen_b)
            seen_a = self.pools["fake_a"].query(fake_a)
            d_real_a, d_fake_a = self.discriminator_terms("discriminator_a", real_a, seen_a)
            loss_d = 0.5 * (d_real_b + d_fake_b) + 0.5 * (d_real_a + d_fake_a)
            loss_d = add_gradient_penalty(loss_d, self.gan_loss, t, "discriminator", real_b, seen_b)
            loss_d = add_gradient_penalty(loss_d, self.gan_loss, t, "discriminator_a", real_a, seen_a)
        t.scaler.scale(loss_d).backward()
        t.scaler.step(t.opt_d)
        t.scaler.update()

        return detached({**terms, "D_b_real": d_real_b, "D_b_fake": d_fake_b, "D_a_real": d_real_a, "D_a_fake": d_fake_a})

    def discriminator_terms(self, name: str, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        D = self.tools.call[name]
        d_real, d_fake = self.gan_loss.discriminator_loss(D(real), D(fake))
        return d_real * self.gan_weight, d_fake * self.gan_weight

    def state_dict(self) -> dict[str, Any]:
        return {f"pool_{name}": [image.cpu() for image in pool.images] for name, pool in self.pools.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        side = self.recipe.data.crop_size
        for name, pool in self.pools.items():
            images = state.get(f"pool_{name}", [])
            if any(tuple(image.shape[-2:]) != (side, side) for image in images):
                # Resumed with another data.crop_size (--allow-changes): the old images cannot join a new batch.
                if self.tools.rank == 0:
                    print(f"cyclegan: the image pool {name} holds {images[0].shape[-1]} px images, not data.crop_size "
                          f"{side}: it starts empty and refills with the next {pool.size} generated images", flush=True)
                images = []
            pool.images = [image.to(self.tools.device) for image in images][: pool.size]
