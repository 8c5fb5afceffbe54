"""The CycleGAN / pix2pix ResNet generator ("resnet_9blocks", "resnet_6blocks" in the reference).

c7s1-ngf (reflection padding 3), two stride-2 3x3 downsamplings, ``n_blocks``
residual blocks at 4*ngf channels (reflection padding 1), two stride-2
transposed-conv upsamplings and a c7s1 output conv with tanh. With the
reference's defaults (9 blocks, ngf 64, instance norm) a 3->3 network has
11,378,179 parameters.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from i2i.contracts import Generator, Params
from i2i.models.layers import Norm, conv_bias, init_weights, norm_layer
from i2i.registry import GENERATORS

Padding = Literal["reflect", "replicate", "zero"]


class ResnetBlock(nn.Module):
    """x + (pad, conv3x3, norm, ReLU, [dropout], pad, conv3x3, norm)(x)."""

    def __init__(self, channels: int, norm: Norm, padding: Padding = "reflect", dropout: float = 0.0):
        super().__init__()
        bias = conv_bias(norm)
        layers: list[nn.Module] = [*_padded_conv3x3(channels, padding, bias), norm_layer(norm, channels), nn.ReLU(True)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers += [*_padded_conv3x3(channels, padding, bias), norm_layer(norm, channels)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _padded_conv3x3(channels: int, padding: Padding, bias: bool) -> list[nn.Module]:
    if padding == "zero":
        return [nn.Conv2d(channels, channels, 3, padding=1, bias=bias)]
    pad = nn.ReflectionPad2d(1) if padding == "reflect" else nn.ReplicationPad2d(1)
    return [pad, nn.Conv2d(channels, channels, 3, bias=bias)]


class ResnetParams(Params):
    n_blocks: int = Field(9, ge=1, description="residual blocks: 9 for 256x256 (reference), 6 for 128x128")
    ngf: int = Field(64, ge=1, description="filters in the first layer")
    n_downsampling: int = Field(2, ge=1, le=5, description="stride-2 downsamplings before the blocks (reference: 2)")
    norm: Norm = "instance"
    padding: Padding = Field("reflect", description="padding inside the residual blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside each block (reference: 0.5 when enabled)")
    init_std: float = Field(0.02, gt=0.0)


@GENERATORS.register("resnet", params=ResnetParams, example={"ngf": 8, "n_blocks": 2})
class ResnetGenerator(Generator):
    def __init__(self, params: ResnetParams, in_channels: int = 3, out_channels: int = 3):
        super().__init__(params)
        ngf, norm = params.ngf, params.norm
        bias = conv_bias(norm)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
        ]
        for i in range(params.n_downsampling):
            channels = ngf * 2**i
            layers += [nn.Conv2d(channels, 2 * channels, 3, 2, 1, bias=bias), norm_layer(norm, 2 * channels), nn.ReLU(True)]
        width = ngf * 2**params.n_downsampling
        layers += [ResnetBlock(width, norm, params.padding, params.dropout) for _ in range(params.n_blocks)]
        for i in range(params.n_downsampling, 0, -1):
            channels = ngf * 2**i
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 3, 2, 1, output_padding=1, bias=bias),
                norm_layer(norm, channels // 2),
                nn.ReLU(True),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, params.init_std)

    @classmethod
    def size_multiple_for(cls, params: ResnetParams) -> int:
        return 2**params.n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
