"""``sn_resnet``: a residual PatchGAN with spectral norm on every conv and no other normalisation.

The discriminator design of SNGAN / BigGAN (Miyato et al. 2018, Brock et al.
2019) made fully convolutional, so it judges patches like pix2pix's PatchGAN:
residual blocks of two 3x3 convs with a 1x1 conv shortcut, 2x average pooling
in the first ``n_downsampling`` blocks, one more block at that resolution, then
a 3x3 conv to one logit per patch. Spectral norm keeps each layer 1-Lipschitz,
which pairs well with the hinge loss and needs no batch statistics (batch size 1).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from i2i.contracts import Discriminator, Params
from i2i.registry import DISCRIMINATORS


class SNResnetParams(Params):
    ndf: int = Field(64, ge=1, description="channels of the first block; doubled per downsampling, up to 8 * ndf")
    n_downsampling: int = Field(3, ge=1, le=6, description="blocks that halve the resolution (logits at 1/2**n)")


def sn_conv(in_channels: int, out_channels: int, kernel: int) -> nn.Conv2d:
    return spectral_norm(nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2))


class DiscriminatorBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, downsample: bool, preactivate: bool = True):
        super().__init__()
        pool = [nn.AvgPool2d(2)] if downsample else []
        # The first block sees the image itself, which must not go through a ReLU.
        self.residual = nn.Sequential(
            *([nn.ReLU()] if preactivate else []),
            sn_conv(in_channels, out_channels, 3),
            nn.ReLU(),
            sn_conv(out_channels, out_channels, 3),
            *pool,
        )
        self.shortcut = nn.Sequential(sn_conv(in_channels, out_channels, 1), *pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.residual(x)


@DISCRIMINATORS.register("sn_resnet", params=SNResnetParams, example={"ndf": 4, "n_downsampling": 2})
class SNResnetDiscriminator(Discriminator):
    def __init__(self, params: SNResnetParams, in_channels: int = 6):
        super().__init__()
        widths = [params.ndf * min(2**i, 8) for i in range(params.n_downsampling)]
        blocks = [DiscriminatorBlock(in_channels, widths[0], downsample=True, preactivate=False)]
        blocks += [DiscriminatorBlock(a, b, downsample=True) for a, b in zip(widths, widths[1:])]
        blocks.append(DiscriminatorBlock(widths[-1], widths[-1], downsample=False))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.ReLU(), sn_conv(widths[-1], 1, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))
