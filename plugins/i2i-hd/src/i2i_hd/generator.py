"""``hd_local``: pix2pixHD's coarse-to-fine generator (global generator + one local enhancer).

Wang et al. 2018, "High-Resolution Image Synthesis and Semantic Manipulation
with Conditional GANs", section 3.2. The global generator G1 (a ResNet
generator, here i2i's own ``resnet`` without its output layer) works on the
input downsampled 2x. The local enhancer G2 encodes the full-resolution input
to half resolution, adds G1's last feature map element-wise, and decodes it
with residual blocks and one transposed conv back to full resolution.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from i2i.contracts import Generator, Params
from i2i.models.layers import Norm, conv_bias, init_weights, norm_layer
from i2i.models.resnet import ResnetBlock, ResnetGenerator, ResnetParams
from i2i.registry import GENERATORS


class LocalEnhancerParams(Params):
    ngf: int = Field(32, ge=1, description="local enhancer filters; the global generator uses 2 * ngf (pix2pixHD: 32)")
    n_downsample_global: int = Field(4, ge=1, le=5, description="global generator downsamplings (pix2pixHD: 4)")
    n_blocks_global: int = Field(9, ge=1, description="global generator residual blocks")
    n_blocks_local: int = Field(3, ge=1, description="local enhancer residual blocks")
    norm: Norm = "instance"
    init_std: float = Field(0.02, gt=0.0)


@GENERATORS.register(
    "hd_local", params=LocalEnhancerParams,
    example={"ngf": 4, "n_downsample_global": 2, "n_blocks_global": 1, "n_blocks_local": 1},
)
class LocalEnhancerGenerator(Generator):
    def __init__(self, params: LocalEnhancerParams, in_channels: int = 3, out_channels: int = 3):
        super().__init__(params)
        ngf, norm = params.ngf, params.norm
        bias = conv_bias(norm)
        global_params = ResnetParams(
            ngf=2 * ngf, n_downsampling=params.n_downsample_global, n_blocks=params.n_blocks_global,
            norm=norm, init_std=params.init_std,
        )
        # Without its output layers (pad, conv, tanh) G1 ends in a 2*ngf feature map at its input's size.
        self.coarse = ResnetGenerator(global_params, in_channels, out_channels).model[:-3]
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.encode = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
            nn.Conv2d(ngf, 2 * ngf, 3, 2, 1, bias=bias),
            norm_layer(norm, 2 * ngf),
            nn.ReLU(True),
        )
        self.decode = nn.Sequential(
            *(ResnetBlock(2 * ngf, norm) for _ in range(params.n_blocks_local)),
            nn.ConvTranspose2d(2 * ngf, ngf, 3, 2, 1, output_padding=1, bias=bias),
            norm_layer(norm, ngf),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            nn.Conv2d(ngf, out_channels, 7),
            nn.Tanh(),
        )
        init_weights(self.encode, params.init_std)
        init_weights(self.decode, params.init_std)

    @classmethod
    def size_multiple_for(cls, params: LocalEnhancerParams) -> int:
        # The global generator downsamples an input that is already half size.
        return 2 ** (params.n_downsample_global + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x) + self.coarse(self.downsample(x)))
