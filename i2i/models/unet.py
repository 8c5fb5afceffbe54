"""The pix2pix U-Net generator ("unet_256" in the reference implementation).

Encoder block i: LeakyReLU(0.2) -> conv 4x4 stride 2 -> norm (no activation
before the first block, no norm on the first and the innermost).
Decoder block i: ReLU -> transposed conv 4x4 stride 2 -> norm -> dropout, fed
with the concatenation of encoder block i's output and the block below.
Activations come first in each block, as in the reference, so a skip carries
the encoder's pre-activation output; the math equals "conv, norm, activation".
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from i2i.contracts import Generator, Params
from i2i.models.layers import Norm, conv_bias, init_weights, norm_layer
from i2i.registry import GENERATORS


class UNetParams(Params):
    num_downs: int = Field(8, ge=2, le=10, description="downsamplings; 8 for 256x256 (1x1 bottleneck)")
    ngf: int = Field(64, ge=1, description="filters in the first encoder block")
    norm: Norm = "batch"
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout in the innermost 512-channel decoder blocks")
    init_std: float = Field(0.02, gt=0.0)


@GENERATORS.register("unet", params=UNetParams, example={"num_downs": 5, "ngf": 8})
class UNetGenerator(Generator):
    def __init__(self, params: UNetParams, in_channels: int = 3, out_channels: int = 3):
        super().__init__(params)
        n, ngf, norm = params.num_downs, params.ngf, params.norm
        bias = conv_bias(norm)
        channels = [ngf * min(2**i, 8) for i in range(n)]

        down = [nn.Conv2d(in_channels, ngf, 4, 2, 1, bias=bias)]
        for i in range(1, n):
            innermost = i == n - 1
            down.append(
                nn.Sequential(
                    nn.LeakyReLU(0.2),
                    nn.Conv2d(channels[i - 1], channels[i], 4, 2, 1, bias=bias),
                    nn.Identity() if innermost else norm_layer(norm, channels[i]),
                )
            )

        up = [
            nn.Sequential(
                nn.ReLU(),
                nn.ConvTranspose2d(2 * ngf, out_channels, 4, 2, 1),
                nn.Tanh(),
            )
        ]
        for i in range(1, n):
            innermost = i == n - 1
            # The reference puts dropout in the ngf*8 blocks between the innermost and the 4th.
            dropout = params.dropout if 4 <= i <= n - 2 else 0.0
            up.append(
                nn.Sequential(
                    nn.ReLU(),
                    nn.ConvTranspose2d(channels[i] * (1 if innermost else 2), channels[i - 1], 4, 2, 1, bias=bias),
                    norm_layer(norm, channels[i - 1]),
                    nn.Dropout(dropout) if dropout else nn.Identity(),
                )
            )
        self.down = nn.ModuleList(down)
        self.up = nn.ModuleList(up)
        init_weights(self, params.init_std)

    @classmethod
    def size_multiple_for(cls, params: UNetParams) -> int:
        return 2**params.num_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
        x = self.up[-1](skips[-1])
        for i in range(len(self.up) - 2, -1, -1):
            x = self.up[i](torch.cat([skips[i], x], 1))
        return x
