"""``focal_frequency``: the focal frequency loss (Jiang et al., ICCV 2021), a reconstruction loss.

Pixel losses (L1, L2) under-weight the frequencies a generator finds hard,
which shows as blur. This loss compares the 2-D spectra of the generated and
the target image: each frequency's squared distance |F_fake - F_target|^2 is
weighted by its own distance to the power ``alpha``, scaled per image to
[0, 1] and not back-propagated, so the hard frequencies dominate. With
``alpha`` 0 every weight is 1 and, as the FFT is orthonormal, the loss equals
the mean squared pixel error.
"""

from __future__ import annotations

import torch
from pydantic import Field

from i2i.contracts import Params, ReconstructionLoss
from i2i.registry import LOSSES


class FocalFrequencyParams(Params):
    alpha: float = Field(1.0, ge=0.0, description="focusing exponent of the spectrum weights (paper: 1)")
    log_weights: bool = Field(False, description="weights log(1 + w) before scaling, for images with huge spectra")
    batch_weights: bool = Field(False, description="scale the weights by the batch's maximum instead of each image's")


@LOSSES.register("focal_frequency", params=FocalFrequencyParams)
class FocalFrequencyLoss(ReconstructionLoss):
    def __init__(self, params: FocalFrequencyParams):
        super().__init__()
        self.params = params

    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # FFTs in float32 whatever the autocast dtype: half-precision spectra overflow.
        diff = torch.fft.fft2(fake.float(), norm="ortho") - torch.fft.fft2(target.float(), norm="ortho")
        distance = diff.real**2 + diff.imag**2
        with torch.no_grad():
            weight = distance.sqrt() ** self.params.alpha
            if self.params.log_weights:
                weight = torch.log1p(weight)
            dims = (0, 1, 2, 3) if self.params.batch_weights else (2, 3)
            weight = weight / weight.amax(dim=dims, keepdim=True).clamp_min(1e-12)
        return (weight * distance).mean()
