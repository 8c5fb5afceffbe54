"""pix2pix (Isola et al., CVPR 2017): a conditional GAN on (input, output) pairs plus L1.

The step, as the reference's ``pix2pix_model.py``: generate; update D on the real pair
(input, target) and the generated pair (input, G(input)), its loss halved; update G on
fooling D plus the weighted reconstruction losses of the recipe (100 x L1 as published).
"""

from __future__ import annotations

import torch
from torch import nn

from i2i.contracts import Method, Params
from i2i.methods.base import build_discriminator, build_generator, build_losses, detached
from i2i.registry import METHODS


@METHODS.register("pix2pix", params=Params)
class Pix2Pix(Method):
    needs_pairs = True  # the discriminator judges (input, target) against (input, generated)

    def build_networks(self, in_channels: int, out_channels: int) -> dict[str, nn.Module]:
        model = self.recipe.model
        self.input_channels = {"generator": in_channels, "discriminator": in_channels + out_channels}
        generator = build_generator(self.recipe, model.generator, in_channels, out_channels)
        # The discriminator sees (condition, image) stacked on channels.
        discriminator = build_discriminator(self.recipe, model.discriminator, in_channels + out_channels)
        (self.gan_loss, self.gan_weight), self.reconstruction = build_losses(self.recipe)
        return {"generator": generator, "discriminator": discriminator}

    def bind(self, tools) -> None:
        super().bind(tools)
        self.gan_loss.to(tools.device)
        for _, loss, _ in self.reconstruction:
            loss.to(tools.device)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        t = self.tools
        G, D, D_frozen = t.call["generator"], t.call["discriminator"], t.call_frozen["discriminator"]
        discriminator = t.networks["discriminator"]
        with t.autocast():
            fake_b = G(real_a)

        # 1. Discriminator: (input, target) is real, (input, generated) is fake.
        discriminator.requires_grad_(True)
        t.opt_d.zero_grad(set_to_none=True)
        with t.autocast():
            fake_pair = torch.cat([real_a, fake_b.detach()], 1)
            real_pair = torch.cat([real_a, real_b], 1)
            d_real, d_fake = self.gan_loss.discriminator_loss(D(real_pair), D(fake_pair))
            loss_d = 0.5 * (d_real + d_fake) * self.gan_weight
            # The penalty differentiates D twice: the plain module (compiled graphs have no double
            # backward; DDP needs no wrapper, the D loss's backward reduces all of D's gradients).
            penalty = self.gan_loss.gradient_penalty(discriminator, real_pair, fake_pair, t.rank, t.world_size)
            if penalty is not None:
                loss_d = loss_d + penalty
        t.scaler.scale(loss_d).backward()
        t.scaler.step(t.opt_d)

        # 2. Generator: fool D, and stay close to the target.
        discriminator.requires_grad_(False)
        t.opt_g.zero_grad(set_to_none=True)
        with t.autocast():
            g_gan = self.gan_loss.generator_loss(D_frozen(torch.cat([real_a, fake_b], 1))) * self.gan_weight
            terms = {f"G_{name}": weight * loss(fake_b.float(), real_b) for name, loss, weight in self.reconstruction}
            loss_g = g_gan + sum(terms.values())
        t.scaler.scale(loss_g).backward()
        t.scaler.step(t.opt_g)
        t.scaler.update()

        return detached({"G_GAN": g_gan, **terms, "D_real": d_real, "D_fake": d_fake})
