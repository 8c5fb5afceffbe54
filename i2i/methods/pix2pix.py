"""pix2pix (Isola et al., CVPR 2017): a conditional GAN on (input, output) pairs plus L1.

The step, as the reference's ``pix2pix_model.py``: generate; update D on the real pair
(input, target) and the generated pair (input, G(input)), its loss halved; update G on
fooling D plus the weighted reconstruction losses of the recipe (100 x L1 as published).

The params add what later work found to help, each off by default (the published step):
pix2pixHD's feature matching, DiffAugment on what D sees, and a decay of the
reconstruction weights over the run.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from i2i.contracts import Method, Params
from i2i.methods.augment import Augmentation, diff_augment
from i2i.methods.base import add_gradient_penalty, build_discriminator, build_generator, build_losses, detached
from i2i.registry import DISCRIMINATORS, METHODS


class Pix2PixParams(Params):
    feature_matching: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="weight of the L1 between D's features of the generated and of the "
        "real pair (pix2pixHD: 10; 0: off); needs a discriminator with forward_features (patchgan, multiscale)"
    )
    diff_augment: list[Augmentation] = Field(
        [], description="DiffAugment on every pair D sees, in this order: color, translation, cutout (Zhao et al. "
        "2020: all three; []: off)"
    )
    reconstruction_decay_to: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="the reconstruction losses' weights go linearly from the recipe's "
        "at the first step to weight x this at the end of the run (null: constant)"
    )

    @field_validator("diff_augment")
    @classmethod
    def _once_each(cls, policy: list[str]) -> list[str]:
        twice = sorted({name for name in policy if policy.count(name) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named more than once")
        return policy


def feature_matching_loss(fake: list[list[torch.Tensor]], real: list[list[torch.Tensor]]) -> torch.Tensor:
    """pix2pixHD's: the L1 distance of each layer's features (the logits excluded), weighted
    4 / layers per layer and 1 / scales per scale; the real features are constants."""
    total = torch.zeros((), device=fake[0][0].device)
    for fake_scale, real_scale in zip(fake, real, strict=True):
        weight = 4.0 / (len(fake_scale) - 1) / len(fake)
        for f, r in zip(fake_scale[:-1], real_scale[:-1], strict=True):
            total = total + weight * F.l1_loss(f.float(), r.detach().float())
    return total


@METHODS.register("pix2pix", params=Pix2PixParams,
                  example={"feature_matching": 10.0, "diff_augment": ["color", "translation", "cutout"]})
class Pix2Pix(Method):
    needs_pairs = True  # the discriminator judges (input, target) against (input, generated)

    params: Pix2PixParams

    @classmethod
    def check_recipe(cls, params: Params, recipe: Any) -> list[str]:
        spec = recipe.model.discriminator
        if params.feature_matching > 0 and not DISCRIMINATORS.get(spec.name, recipe.plugins).obj.gives_features():
            return [f"method.params.feature_matching: discriminator '{spec.name}' gives no features "
                    f"(forward_features); use patchgan or multiscale, or feature_matching 0"]
        return []

    def build_networks(self, in_channels: int, out_channels: int) -> dict[str, nn.Module]:
        model = self.recipe.model
        self.input_channels = {"generator": in_channels, "discriminator": in_channels + out_channels}
        self.out_channels = out_channels
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
        # A tensor, changed in place: a captured CUDA graph reads it at each replay.
        self.reconstruction_scale = torch.ones((), device=tools.device)

    def set_progress(self, step: int, total_steps: int) -> None:
        if self.params.reconstruction_decay_to is not None:
            self.reconstruction_scale.fill_(1 + (self.params.reconstruction_decay_to - 1) * step / total_steps)

    def augmented(self, *pairs: torch.Tensor) -> list[torch.Tensor]:
        """``pairs`` under one DiffAugment draw (themselves where it is off)."""
        if not self.params.diff_augment:
            return list(pairs)
        return diff_augment(list(pairs), self.params.diff_augment, self.out_channels)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        t, p = self.tools, self.params
        G, D, D_frozen = t.call["generator"], t.call["discriminator"], t.call_frozen["discriminator"]
        discriminator = t.networks["discriminator"]
        with t.autocast():
            fake_b = G(real_a)

        # 1. Discriminator: (input, target) is real, (input, generated) is fake.
        discriminator.requires_grad_(True)
        t.opt_d.zero_grad(set_to_none=True)
        with t.autocast():
            (fake_pair,) = self.augmented(torch.cat([real_a, fake_b.detach()], 1))
            (real_pair,) = self.augmented(torch.cat([real_a, real_b], 1))
            d_real, d_fake = self.gan_loss.discriminator_loss(D(real_pair), D(fake_pair))
            loss_d = 0.5 * (d_real + d_fake) * self.gan_weight
            loss_d = add_gradient_penalty(loss_d, self.gan_loss, t, "discriminator", real_pair, fake_pair)
        t.scaler.scale(loss_d).backward()
        t.scaler.step(t.opt_d)

        # 2. Generator: fool D, and stay close to the target.
        discriminator.requires_grad_(False)
        t.opt_g.zero_grad(set_to_none=True)
        with t.autocast():
            matching = {}
            if p.feature_matching > 0:
                # One draw for both pairs: their features are compared place by place. The
                # plain module: its features are no part of a compiled forward.
                fake_pair, real_pair = self.augmented(torch.cat([real_a, fake_b], 1), torch.cat([real_a, real_b], 1))
                fake_features = discriminator.forward_features(fake_pair)
                with torch.no_grad():
                    real_features = discriminator.forward_features(real_pair)
                g_gan = self.gan_loss.generator_loss([layers[-1] for layers in fake_features]) * self.gan_weight
                matching["G_feat"] = p.feature_matching * feature_matching_loss(fake_features, real_features)
            else:
                (fake_pair,) = self.augmented(torch.cat([real_a, fake_b], 1))
                g_gan = self.gan_loss.generator_loss(D_frozen(fake_pair)) * self.gan_weight
            scale = self.reconstruction_scale if p.reconstruction_decay_to is not None else 1.0
            terms = {f"G_{name}": weight * scale * loss(fake_b.float(), real_b) for name, loss, weight in self.reconstruction}
            terms.update(matching)
            loss_g = g_gan + sum(terms.values())
        t.scaler.scale(loss_g).backward()
        t.scaler.step(t.opt_g)
        t.scaler.update()

        return detached({"G_GAN": g_gan, **terms, "D_real": d_real, "D_fake": d_fake})
