"""Training losses: the GAN objective (an ``AdversarialLoss``; a recipe has exactly one) and
pixel losses (``ReconstructionLoss``es; any number). Each recipe entry multiplies its loss by
``weight`` (100 for pix2pix's L1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from i2i.contracts import AdversarialLoss, Logits, Params, ReconstructionLoss
from i2i.registry import LOSSES


def _scales(logits: Logits) -> list[torch.Tensor]:
    return list(logits) if isinstance(logits, (list, tuple)) else [logits]


class GANParams(Params):
    mode: Literal["vanilla", "lsgan", "hinge", "wgan-gp"] = "vanilla"
    real_label: float = 1.0
    fake_label: float = 0.0
    gp_weight: float = Field(10.0, ge=0.0, description="gradient-penalty weight (wgan-gp only)")
    r1_gamma: float = Field(0.0, ge=0.0, allow_inf_nan=False, description="R1: gamma / 2 x E|grad D(real)|^2, "
                            "zero-centred on the real data, any mode (Mescheder et al. 2018; 0: off)")


@LOSSES.register("gan", params=GANParams)
class GANLoss(AdversarialLoss):
    """vanilla: BCE with logits (pix2pix); lsgan: least squares; hinge; wgan-gp: Wasserstein + gradient penalty.
    Each method takes one logit map or a list of them (a multi-scale discriminator) and averages over the list."""

    def __init__(self, params: GANParams):
        super().__init__()
        self.params = params

    def _against(self, logits: torch.Tensor, label: float) -> torch.Tensor:
        target = torch.full_like(logits, label)
        if self.params.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)

    def generator_loss(self, fake: Logits) -> torch.Tensor:
        scales = _scales(fake)
        return sum(self._generator_term(logits) for logits in scales) / len(scales)

    def discriminator_loss(self, real: Logits, fake: Logits) -> tuple[torch.Tensor, torch.Tensor]:
        """The real and the fake term, each unhalved (the trainer averages them) and each
        averaged over the scales of a multi-scale discriminator."""
        terms = [self._discriminator_terms(r, f) for r, f in zip(_scales(real), _scales(fake), strict=True)]
        return sum(t[0] for t in terms) / len(terms), sum(t[1] for t in terms) / len(terms)

    def _generator_term(self, fake: torch.Tensor) -> torch.Tensor:
        if self.params.mode in ("vanilla", "lsgan"):
            return self._against(fake, self.params.real_label)
        return -fake.mean()

    def _discriminator_terms(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mode = self.params.mode
        if mode in ("vanilla", "lsgan"):
            return self._against(real, self.params.real_label), self._against(fake, self.params.fake_label)
        if mode == "hinge":
            return F.relu(1.0 - real).mean(), F.relu(1.0 + fake).mean()
        return -real.mean(), fake.mean()

    def gradient_penalty(
        self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, rank: int = 0, world_size: int = 1
    ) -> torch.Tensor | None:
        """WGAN-GP's penalty (wgan-gp mode) plus R1 (``r1_gamma`` > 0); None where neither is on."""
        penalties = []
        if self.params.mode == "wgan-gp" and self.params.gp_weight > 0:
            penalties.append(self._wgan_gp(discriminator, real, fake, rank, world_size))
        if self.params.r1_gamma > 0:
            penalties.append(self._r1(discriminator, real))
        return sum(penalties) if penalties else None

    def _r1(self, discriminator: nn.Module, real: torch.Tensor) -> torch.Tensor:
        """gamma / 2 x the batch mean of |grad_x D(x)|^2 on the real input, D(x) being each
        sample's mean logit (averaged over scales), so gamma does not depend on the size of the
        logit map. In float32 whatever the autocast: squared half-precision gradients underflow."""
        with torch.autocast(real.device.type, enabled=False):
            x = real.detach().float().requires_grad_(True)
            scales = _scales(discriminator(x))
            score = sum(s.float().flatten(1).mean(1).sum() for s in scales) / len(scales)
            (grad,) = torch.autograd.grad(score, x, create_graph=True)
            return self.params.r1_gamma / 2 * grad.pow(2).flatten(1).sum(1).mean()

    def _wgan_gp(
        self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, rank: int, world_size: int
    ) -> torch.Tensor:
        """The penalty on (|grad D(x_hat)| - 1)^2 at random interpolates.

        Every rank draws the whole global batch's interpolation weights and keeps its own samples'
        (the sampler deals samples out round-robin), so N processes at batch b draw per sample what
        one process at batch N x b draws."""
        alpha = torch.rand(real.shape[0] * world_size, 1, 1, 1, device=real.device, dtype=real.dtype)[rank::world_size]
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
        scales = _scales(discriminator(mixed))
        (grad,) = torch.autograd.grad(sum(s.sum() for s in scales) / len(scales), mixed, create_graph=True)
        return self.params.gp_weight * ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


@LOSSES.register("l1", params=Params)
class L1Loss(ReconstructionLoss):
    def __init__(self, params: Params):
        super().__init__()

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(fake, target)


@LOSSES.register("l2", params=Params)
class L2Loss(ReconstructionLoss):
    def __init__(self, params: Params):
        super().__init__()

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(fake, target)
