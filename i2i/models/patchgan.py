"""PatchGAN discriminators: a grid of real/fake logits, one per receptive-field patch.

``n_layers`` 3 gives the 70x70 PatchGAN of pix2pix (30x30 logits on 256x256),
1 gives 16x16 patches and 5 gives 286x286. ``pixelgan`` judges single pixels;
``multiscale`` runs several PatchGANs on successively downsampled inputs.
The input is the channel concatenation (condition, image).

``antialias: true`` is CUT's discriminator (taesungp/contrastive-unpaired-translation,
its default ``no_antialias=False``): each stride-2 4x4 conv becomes a stride-1 4x4 conv,
its norm and LeakyReLU, then the fixed 3x3 binomial blur with stride 2 and reflection
padding (``BlurDown``, their ``Downsample``). The blur is a constant, so the parameter count
stays the same (2,764,737 at ndf 64, n_layers 3, 3 input channels) and so does the output
size, but the strided layers now run at 4x the positions before the blur.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from i2i.contracts import Discriminator, Params
from i2i.models.layers import Norm, conv_bias, init_weights, norm_layer
from i2i.models.resnet import BlurDown
from i2i.registry import DISCRIMINATORS


class PatchGANParams(Params):
    n_layers: int = Field(3, ge=1, le=6, description="strided conv layers: 1 -> 16x16, 3 -> 70x70, 5 -> 286x286")
    ndf: int = Field(64, ge=1)
    norm: Norm = "batch"
    spectral_norm: bool = False
    init_std: float = Field(0.02, gt=0.0)
    antialias: bool = Field(False, description="CUT's discriminator: each stride-2 conv as a stride-1 conv then a "
                            "blurred stride-2 downsampling (same parameters)")


@DISCRIMINATORS.register("patchgan", params=PatchGANParams, example={"ndf": 8, "n_layers": 2})
class PatchGANDiscriminator(Discriminator):
    def __init__(self, params: PatchGANParams, in_channels: int = 6):
        super().__init__()
        ndf, norm, antialias = params.ndf, params.norm, params.antialias
        bias = conv_bias(norm)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, 1 if antialias else 2, 1), nn.LeakyReLU(0.2)]
        layers += [BlurDown(ndf)] if antialias else []
        mult = 1
        for n in range(1, params.n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            strided = n < params.n_layers  # the last feature layer keeps the resolution
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, 2 if strided and not antialias else 1, 1, bias=bias),
                norm_layer(norm, ndf * mult),
                nn.LeakyReLU(0.2),
            ]
            layers += [BlurDown(ndf * mult)] if strided and antialias else []
        layers.append(nn.Conv2d(ndf * mult, 1, 4, 1, 1))
        self.model = nn.Sequential(*layers)
        init_weights(self, params.init_std)
        if params.spectral_norm:
            for layer in self.model:
                if isinstance(layer, nn.Conv2d):
                    nn.utils.parametrizations.spectral_norm(layer)

    def forward(self, x):
        return self.model(x)

    def forward_features(self, x):
        """The output of each LeakyReLU (the first conv's and each block's, as pix2pixHD's
        intermediate features), then the logits."""
        features = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                features.append(x)
        return [features + [x]]


class PixelGANParams(Params):
    ndf: int = Field(64, ge=1)
    norm: Norm = "batch"
    init_std: float = Field(0.02, gt=0.0)


@DISCRIMINATORS.register("pixelgan", params=PixelGANParams, example={"ndf": 8})
class PixelGANDiscriminator(Discriminator):
    def __init__(self, params: PixelGANParams, in_channels: int = 6):
        super().__init__()
        ndf, norm = params.ndf, params.norm
        self.model = nn.Sequential(
            nn.Conv2d(in_channels, ndf, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf, ndf * 2, 1, bias=conv_bias(norm)),
            norm_layer(norm, ndf * 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(ndf * 2, 1, 1, bias=conv_bias(norm)),
        )
        init_weights(self, params.init_std)

    def forward(self, x):
        return self.model(x)


class MultiscaleParams(PatchGANParams):
    num_scales: int = Field(2, ge=1, le=5, description="PatchGANs, each on a 2x smaller input than the last (pix2pixHD: 2)")


@DISCRIMINATORS.register("multiscale", params=MultiscaleParams, example={"ndf": 8, "n_layers": 2, "num_scales": 2})
class MultiscaleDiscriminator(Discriminator):
    """pix2pixHD's multi-scale discriminator: identical PatchGANs (separate weights) on the
    input average-pooled 0, 1, 2, ... times. Returns one logit map per scale, finest first;
    the GAN loss averages over them."""

    def __init__(self, params: MultiscaleParams, in_channels: int = 6):
        super().__init__()
        patchgan = PatchGANParams(**params.model_dump(exclude={"num_scales"}))
        self.scales = nn.ModuleList(PatchGANDiscriminator(patchgan, in_channels) for _ in range(params.num_scales))
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x):
        logits = []
        for i, discriminator in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            logits.append(discriminator(x))
        return logits

    def forward_features(self, x):
        features = []
        for i, discriminator in enumerate(self.scales):
            if i:
                x = self.downsample(x)
            features += discriminator.forward_features(x)
        return features
