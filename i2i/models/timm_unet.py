"""``timm_unet``: a U-Net whose encoder is any timm backbone that supports ``features_only``.

The encoder yields feature maps at strides such as 2, 4, 8, 16, 32 (resnet,
efficientnet) or 4, 8, 16, 32 (convnext). Decoder block j upsamples (nearest)
to the next shallower feature map, concatenates it and applies two
conv3x3-norm-ReLU; the last block goes back to the input resolution and takes
the input image itself as its skip, which keeps fine detail for translation.
A 3x3 conv and tanh give the output.

Pretrained weights come only from a local file (``pretrained_path``: a timm
state dict as .safetensors, .pth or .bin, e.g. a checkpoint saved once from
the hub), loaded by timm itself, which also adapts the stem to ``in_channels``;
nothing is downloaded at run time.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from i2i.contracts import Generator, Params
from i2i.errors import I2IError
from i2i.models.layers import Norm, conv_bias, init_weights, norm_layer
from i2i.registry import GENERATORS


class TimmUNetParams(Params):
    backbone: str = Field("resnet34", description="timm model name (timm.list_models()), with features_only support")
    pretrained_path: Path | None = Field(None, description="local file with the backbone's timm weights; none = random init")
    decoder_width: int = Field(16, ge=1, description="channels of the last decoder block; doubled per level upwards")
    norm: Norm = Field("batch", description="decoder normalisation (the encoder keeps its own)")
    init_std: float = Field(0.02, gt=0.0, description="decoder init (the encoder keeps timm's)")

    @field_validator("backbone")
    @classmethod
    def _known_to_timm(cls, name: str) -> str:
        import timm

        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"timm has no model {name!r}{hint}")
        return name

    @field_validator("pretrained_path")
    @classmethod
    def _is_a_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"weights file not found: {path}")
        return path


def _conv_block(in_channels: int, out_channels: int, norm: Norm) -> nn.Sequential:
    bias = conv_bias(norm)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=bias),
        norm_layer(norm, out_channels),
        nn.ReLU(True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=bias),
        norm_layer(norm, out_channels),
        nn.ReLU(True),
    )


@lru_cache
def _encoder_stride(backbone: str) -> int:
    """The backbone's total stride, read from a copy built on the meta device (no memory, no weights)."""
    import timm

    try:
        with torch.device("meta"):
            encoder = timm.create_model(backbone, features_only=True, pretrained=False)
    except (RuntimeError, ValueError, KeyError) as error:
        raise I2IError(f"timm_unet: cannot build backbone {backbone!r}: {error}") from None
    return encoder.feature_info.reduction()[-1]


@GENERATORS.register("timm_unet", params=TimmUNetParams, example={"backbone": "test_resnet", "decoder_width": 8})
class TimmUNetGenerator(Generator):
    def __init__(self, params: TimmUNetParams, in_channels: int = 3, out_channels: int = 3):
        super().__init__(params)
        import timm

        weights = {"pretrained_cfg_overlay": {"file": str(params.pretrained_path)}} if params.pretrained_path else {}
        try:
            self.encoder = timm.create_model(
                params.backbone, features_only=True, pretrained=bool(weights), in_chans=in_channels, **weights
            )
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            source = f" from {params.pretrained_path}" if params.pretrained_path else ""
            raise I2IError(f"timm_unet: cannot build backbone {params.backbone!r}{source}: {error}") from None
        # Backbones expect ImageNet-normalised input; i2i images are in [-1, 1].
        cfg = self.encoder.pretrained_cfg
        mean = torch.tensor(cfg.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
        std = torch.tensor(cfg.get("std", timm.data.IMAGENET_DEFAULT_STD))
        if len(mean) != in_channels:
            mean, std = mean.mean().repeat(in_channels), std.mean().repeat(in_channels)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

        skips = [in_channels, *self.encoder.feature_info.channels()[:-1]][::-1]
        below = self.encoder.feature_info.channels()[-1]
        self.decoder = nn.ModuleList()
        for level, skip in enumerate(skips):
            width = params.decoder_width * 2 ** (len(skips) - 1 - level)
            self.decoder.append(_conv_block(below + skip, width, params.norm))
            below = width
        self.head = nn.Sequential(nn.Conv2d(below, out_channels, 3, padding=1), nn.Tanh())
        init_weights(self.decoder, params.init_std)
        init_weights(self.head, params.init_std)

    @classmethod
    def size_multiple_for(cls, params: TimmUNetParams) -> int:
        # Sides that divide by the encoder's total stride keep every skip aligned without resizing.
        return _encoder_stride(params.backbone)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(((x + 1) / 2 - self.mean) / self.std)
        skips = [x, *features[:-1]][::-1]
        y = features[-1]
        for block, skip in zip(self.decoder, skips):
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = block(torch.cat([y, skip], 1))
        return self.head(y)
