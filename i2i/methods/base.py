"""What every method builds from the recipe: its networks and its losses."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from i2i.contracts import AdversarialLoss, ReconstructionLoss, StepTools
from i2i.recipe import ComponentSpec, Recipe
from i2i.registry import DISCRIMINATORS, GENERATORS, LOSSES


def build_generator(recipe: Recipe, spec: ComponentSpec, in_channels: int, out_channels: int) -> nn.Module:
    return GENERATORS.build(spec.name, spec.params, plugins=recipe.plugins, in_channels=in_channels, out_channels=out_channels)


def build_discriminator(recipe: Recipe, spec: ComponentSpec, in_channels: int) -> nn.Module:
    return DISCRIMINATORS.build(spec.name, spec.params, plugins=recipe.plugins, in_channels=in_channels)


def build_losses(recipe: Recipe) -> tuple[tuple[AdversarialLoss, float], list[tuple[str, ReconstructionLoss, float]]]:
    """(adversarial loss, weight) and [(name, reconstruction loss, weight), ...]; recipe
    validation made sure there is exactly one adversarial loss."""
    losses = [(spec, LOSSES.build(spec.name, spec.params, plugins=recipe.plugins)) for spec in recipe.losses]
    (adversarial,) = [(loss, spec.weight) for spec, loss in losses if isinstance(loss, AdversarialLoss)]
    return adversarial, [(spec.name, loss, spec.weight) for spec, loss in losses if isinstance(loss, ReconstructionLoss)]


def refuse_reconstruction_losses(recipe: Recipe, method: str, own_terms: str) -> list[str]:
    """``check_recipe`` problems for a method whose reconstruction terms are its own params."""
    return [
        f"losses.{i}: {method}'s reconstruction terms are {own_terms}; remove '{spec.name}'"
        for i, spec in enumerate(recipe.losses)
        if issubclass(LOSSES.get(spec.name, recipe.plugins).obj, ReconstructionLoss)
    ]


def add_gradient_penalty(
    loss_d: torch.Tensor, gan_loss: AdversarialLoss, tools: StepTools, name: str, real: torch.Tensor, fake: torch.Tensor
) -> torch.Tensor:
    """``loss_d`` plus the adversarial loss's gradient penalty on discriminator ``name`` (WGAN-GP,
    R1), if it has one. The penalty differentiates D twice: the plain module (compiled graphs
    have no double backward; DDP needs no wrapper, the D loss's backward reduces all of D's
    gradients)."""
    penalty = gan_loss.gradient_penalty(tools.networks[name], real, fake, tools.rank, tools.world_size)
    return loss_d if penalty is None else loss_d + penalty


def detached(terms: dict[str, Any]) -> dict[str, Any]:
    return {name: value.detach() for name, value in terms.items()}
