"""The CycleGAN / pix2pix ResNet generator ("resnet_9blocks", "resnet_6blocks" in the reference).

c7s1-ngf (reflection padding 3), two stride-2 3x3 downsamplings, ``n_blocks``
residual blocks at 4*ngf channels (reflection padding 1), two stride-2
transposed-conv upsamplings and a c7s1 output conv with tanh. With the
reference's defaults (9 blocks, ngf 64, instance norm) a 3->3 network has
11,378,179 parameters.

``antialias: true`` is CUT's generator (taesungp/contrastive-unpaired-translation,
its default ``no_antialias=False, no_antialias_up=False``): each downsampling is a
stride-1 conv, norm, ReLU and then a fixed [1, 2, 1] x [1, 2, 1] / 16 blur with
stride 2 (``BlurDown``), and each upsampling a fixed [1, 3, 3, 1] transposed blur
with stride 2 (``BlurUp``) before a stride-1 conv, norm and ReLU. The filters are
constants, not parameters, so the count stays the same. ``encode`` returns the
outputs of chosen layers of ``model``, numbered as in CUT's reference (its
``nce_layers`` 0, 4, 8, 12, 16).
"""

from __future__ import annotations

import contextlib


from math import comb
from typing import Callable, Literal

import torch
import torch.nn.functional as F
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


def binomial_filter(taps: int) -> torch.Tensor:
    """The taps x taps outer product of binomial coefficients, summing to 1."""
    row = torch.tensor([comb(taps - 1, k) for k in range(taps)], dtype=torch.float32)
    return torch.outer(row, row) / row.sum() ** 2


def in_fp32(blur: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``blur(x)`` computed in float32 with autocast off, returned in ``x``'s dtype: the fixed
    depthwise blurs run 2-5x slower in bf16 than in fp32 on the CPU (oneDNN; measured on an
    Intel Xeon with AMX, fwd + bwd at CUT's sizes), and they are memory-bound anyway."""
    # The meta device (shapes only: the recipe checks' dry runs) has no autocast to turn off.
    with contextlib.nullcontext() if x.device.type == "meta" else torch.autocast(x.device.type, enabled=False):
        return blur(x.float()).to(x.dtype)


class BlurDown(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection pad 1, then the 3x3 binomial blur
    per channel with stride 2 (CUT's ``Downsample``)."""

    def __init__(self, channels: int):
        super().__init__()
        # Not persistent: a constant of the architecture, not a weight to save.
        self.register_buffer("kernel", binomial_filter(3).expand(channels, 1, 3, 3).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_fp32(self.blur, x)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), self.kernel.float(), stride=2, groups=x.shape[1])


class BlurUp(nn.Module):
    """Anti-aliased 2x upsampling: replication pad 1, a 4x4 binomial transposed blur per
    channel with stride 2 (scaled by 4 to keep the mean), cropped to twice the input
    size (CUT's ``Upsample``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("kernel", (4 * binomial_filter(4)).expand(channels, 1, 4, 4).clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return in_fp32(self.blur, x)

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        # (H + 2 - 1) * 2 - 2 * 2 + 4 = 2H + 2 rows; the reference keeps rows 1 .. 2H.
        return F.conv_transpose2d(padded, self.kernel.float(), stride=2, padding=2, groups=x.shape[1])[:, :, 1:-1, 1:-1]


class ResnetParams(Params):
    n_blocks: int = Field(9, ge=1, description="residual blocks: 9 for 256x256 (reference), 6 for 128x128")
    ngf: int = Field(64, ge=1, description="filters in the first layer")
    n_downsampling: int = Field(2, ge=1, le=5, description="stride-2 downsamplings before the blocks (reference: 2)")
    norm: Norm = "instance"
    padding: Padding = Field("reflect", description="padding inside the residual blocks")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside each block (reference: 0.5 when enabled)")
    init_std: float = Field(0.02, gt=0.0)
    antialias: bool = Field(False, description="CUT's generator: blurred stride-2 down- and upsampling (same parameters)")


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
            stride = 1 if params.antialias else 2
            layers += [nn.Conv2d(channels, 2 * channels, 3, stride, 1, bias=bias), norm_layer(norm, 2 * channels), nn.ReLU(True)]
            layers += [BlurDown(2 * channels)] if params.antialias else []
        width = ngf * 2**params.n_downsampling
        layers += [ResnetBlock(width, norm, params.padding, params.dropout) for _ in range(params.n_blocks)]
        for i in range(params.n_downsampling, 0, -1):
            channels = ngf * 2**i
            if params.antialias:
                layers += [BlurUp(channels), nn.Conv2d(channels, channels // 2, 3, 1, 1, bias=bias)]
            else:
                layers += [nn.ConvTranspose2d(channels, channels // 2, 3, 2, 1, output_padding=1, bias=bias)]
            layers += [norm_layer(norm, channels // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self, params.init_std)

    @classmethod
    def size_multiple_for(cls, params: ResnetParams) -> int:
        return 2**params.n_downsampling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def encode(self, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
        """The outputs of ``self.model[i]`` for each i in ``layers`` (in that order), running
        the network only as far as the deepest of them."""
        wanted = set(layers)
        if not wanted or min(wanted) < 0 or max(wanted) >= len(self.model):
            raise ValueError(f"encode layers must lie in 0..{len(self.model) - 1}, got {layers}")
        outputs = {}
        for index, layer in enumerate(self.model[: max(wanted) + 1]):
            x = layer(x)
            if index in wanted:
                # The in-place ReLU that may follow would overwrite a returned norm output.
                outputs[index] = x.clone() if index < max(wanted) and _in_place(self.model[index + 1]) else x
        return [outputs[index] for index in layers]


def _in_place(layer: nn.Module) -> bool:
    return getattr(layer, "inplace", False)
