"""Pieces shared by the built-in networks."""

from __future__ import annotations

from typing import Literal

from torch import nn

Norm = Literal["batch", "instance", "none"]


def norm_layer(norm: Norm, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        # The reference uses affine-free, stat-free InstanceNorm.
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def conv_bias(norm: Norm) -> bool:
    # BatchNorm's shift makes a conv bias redundant; InstanceNorm without affine
    # leaves it in (as the reference does), since its output is re-centred anyway.
    return norm != "batch"


def init_weights(module: nn.Module, std: float = 0.02) -> nn.Module:
    """The pix2pix initialisation: conv weights N(0, std), norm weights N(1, std), biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.InstanceNorm2d)) and layer.weight is not None:
            nn.init.normal_(layer.weight, 1.0, std)
            nn.init.zeros_(layer.bias)
    return module
