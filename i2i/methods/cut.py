"""CUT and FastCUT (Park et al., ECCV 2020): one generator, a PatchNCE loss, no pairs needed.

A patch of the output should be closer to the input patch at the same place than to
any other input patch: features of the input and of the output are taken from the
generator's own encoder at ``nce_layers``, ``num_patches`` places are drawn per layer,
each passed through a two-layer MLP head per layer and L2-normalised, and scored by
InfoNCE at temperature ``nce_t`` (the reference's ``PatchNCELoss``; the input's features are the
fixed keys). The step, as the reference's ``cut_model.py``: generate; update D (LSGAN, loss
halved); update G and the heads on fooling D plus the NCE loss (averaged over layers,
times ``lambda_nce``). CUT adds the identity term NCE(b, G(b)) and averages the two; FastCUT
has none, weighs NCE 10x and flips the input half the time (flip-equivariance).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator
from torch import nn

from i2i.contracts import LossWeight, Method, Params
from i2i.errors import I2IError
from i2i.methods.base import (
    add_gradient_penalty, build_discriminator, build_generator, build_losses, detached, refuse_reconstruction_losses,
)
from i2i.registry import METHODS


class PatchNCEHeads(nn.Module):
    """The reference's ``PatchSampleF`` ('mlp_sample'): per layer, sample patch positions
    and project each sampled feature with Linear-ReLU-Linear to ``channels``, L2-normalised."""

    def __init__(self, feature_channels: list[int], channels: int):
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(c, channels), nn.ReLU(), nn.Linear(channels, channels)) for c in feature_channels
        )

    def forward(
        self, features: list[torch.Tensor], num_patches: int, positions: list[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(per layer: N*num_patches x channels, per layer: the positions drawn)."""
        projected, drawn = [], []
        for i, (feature, head) in enumerate(zip(features, self.heads, strict=True)):
            flat = feature.permute(0, 2, 3, 1).flatten(1, 2)  # N x HW x C
            if positions is None:
                where = torch.randperm(flat.shape[1], device=flat.device)[:num_patches]
            else:
                where = positions[i]
            sample = head(flat[:, where, :].flatten(0, 1))
            projected.append(sample / (sample.float().norm(dim=1, keepdim=True) + 1e-7).to(sample.dtype))
            drawn.append(where)
        return projected, drawn


def patch_nce(queries: torch.Tensor, keys: torch.Tensor, batch_size: int, temperature: float) -> torch.Tensor:
    """The reference's ``PatchNCELoss`` per patch: each query's positive is the key at its
    own position; its negatives, the other positions of the same image."""
    keys = keys.detach()
    queries, keys = queries.float(), keys.float()
    positive = (queries * keys).sum(dim=1, keepdim=True)
    dim = queries.shape[1]
    per_image_q, per_image_k = queries.view(batch_size, -1, dim), keys.view(batch_size, -1, dim)
    negative = torch.bmm(per_image_q, per_image_k.transpose(2, 1))
    same_place = torch.eye(negative.shape[1], dtype=torch.bool, device=negative.device)[None]
    negative = negative.masked_fill(same_place, -10.0).flatten(0, 1)
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device), reduction="none")


def init_xavier(module: nn.Module, gain: float) -> None:
    """CUT's default ``init_type: xavier``: conv and linear weights Xavier-normal, biases 0."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(layer.weight, gain=gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


# Each image's negatives are a num_patches x num_patches matrix per layer: 4096 (16 times the
# reference's 256) is 64 MiB an image and layer in float32.
MAX_PATCHES = 4096
# Logits are cosine similarities over the temperature: below 0.001 (70 times colder than the
# reference's 0.07) they and their gradients grow past what float32 trains with; above 10 they
# hardly differ, and nothing is learnt from them.
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-3, 10.0


class CUTParams(Params):
    mode: Literal["cut", "fastcut"] = Field(
        "cut", description="cut: identity NCE term, lambda_nce 1; fastcut: none, lambda_nce 10, flip-equivariance"
    )
    lambda_gan: LossWeight = Field(1.0, description="weight of the GAN loss")
    lambda_nce: LossWeight | None = Field(None, description="weight of the NCE loss (default: 1 cut, 10 fastcut)")
    nce_identity: bool | None = Field(None, description="also NCE(b, G(b)) (default: cut yes, fastcut no)")
    flip_equivariance: bool | None = Field(None, description="flip the input half the time (default: fastcut)")
    nce_layers: list[Annotated[int, Field(ge=0)]] = Field(
        [0, 4, 8, 12, 16], min_length=1, description="generator layers the features come from, each once"
    )
    num_patches: int = Field(256, ge=1, le=MAX_PATCHES, description="patches drawn per layer (at most the "
                             "layer's positions)")
    head_channels: int = Field(256, ge=1, description="width of the MLP heads")
    nce_t: float = Field(0.07, ge=MIN_TEMPERATURE, le=MAX_TEMPERATURE, description="InfoNCE temperature")
    init: Literal["xavier", "network"] = Field(
        "xavier", description="xavier (CUT's default, gain 0.02) or the networks' own initialisation"
    )

    @field_validator("nce_layers")
    @classmethod
    def _each_layer_once(cls, layers: list[int]) -> list[int]:
        repeated = sorted({layer for layer in layers if layers.count(layer) > 1})
        if repeated:  # a repeated layer would count its NCE term twice in the layers' average
            raise ValueError(f"layer {', '.join(map(str, repeated))} is listed more than once")
        return layers

    @model_validator(mode="after")
    def _mode_defaults(self) -> CUTParams:
        fast = self.mode == "fastcut"
        if self.lambda_nce is None:
            self.lambda_nce = 10.0 if fast else 1.0
        if self.nce_identity is None:
            self.nce_identity = not fast
        if self.flip_equivariance is None:
            self.flip_equivariance = fast
        return self


@METHODS.register("cut", params=CUTParams, example={"nce_layers": [0, 4, 8], "num_patches": 16, "head_channels": 8})
class CUT(Method):
    generator_side = ("generator", "nce_heads")
    graphable = False  # the flip and the patch positions are drawn on the host

    params: CUTParams

    @classmethod
    def check_recipe(cls, params: Params, recipe: Any) -> list[str]:
        return refuse_reconstruction_losses(recipe, "cut", "PatchNCE's (method.params.lambda_nce)")

    def build_networks(self, in_channels: int, out_channels: int) -> dict[str, nn.Module]:
        p, recipe = self.params, self.recipe
        if p.nce_identity and in_channels != out_channels:
            raise I2IError(f"cut's identity term needs as many input as output channels (here {in_channels} and "
                           f"{out_channels}); set method.params.mode: fastcut or nce_identity: false")
        generator = build_generator(recipe, recipe.model.generator, in_channels, out_channels)
        if not callable(getattr(generator, "encode", None)):
            raise I2IError(f"cut takes its features from the generator's encoder: generator "
                           f"'{recipe.model.generator.name}' has no encode(x, layers) (use 'resnet')")
        discriminator = build_discriminator(recipe, recipe.model.discriminator, out_channels)
        heads = PatchNCEHeads(self.feature_channels(generator, in_channels), p.head_channels)
        if p.init == "xavier":
            for network in (generator, discriminator, heads):
                init_xavier(network, 0.02)
        (self.gan_loss, self.gan_weight), _ = build_losses(recipe)
        self.input_channels = {"generator": in_channels, "discriminator": out_channels}
        return {"generator": generator, "nce_heads": heads, "discriminator": discriminator}

    def feature_channels(self, generator: nn.Module, in_channels: int) -> list[int]:
        side = 8 * generator.size_multiple
        try:
            with torch.no_grad():
                features = generator.encode(torch.zeros(1, in_channels, side, side), self.params.nce_layers)
        except ValueError as error:
            raise I2IError(f"method.params.nce_layers: {error}") from None
        return [feature.shape[1] for feature in features]

    def bind(self, tools) -> None:
        super().bind(tools)
        self.gan_loss.to(tools.device)

    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        t, p = self.tools, self.params
        G, D, D_frozen = t.call["generator"], t.call["discriminator"], t.call_frozen["discriminator"]
        discriminator = t.networks["discriminator"]
        real = torch.cat([real_a, real_b]) if p.nce_identity else real_a
        flipped = p.flip_equivariance and torch.rand(()).item() < 0.5
        if flipped:
            real = real.flip(3)
        with t.autocast():
            fake = G(real)
        fake_b = fake[: real_a.shape[0]]

        # 1. Discriminator: real B against G(a), halved.
        discriminator.requires_grad_(True)
        t.opt_d.zero_grad(set_to_none=True)
        with t.autocast():
            d_real, d_fake = self.gan_loss.discriminator_loss(D(real_b), D(fake_b.detach()))
            loss_d = 0.5 * (d_real + d_fake) * self.gan_weight
            loss_d = add_gradient_penalty(loss_d, self.gan_loss, t, "discriminator", real_b, fake_b.detach())
        t.scaler.scale(loss_d).backward()
        t.scaler.step(t.opt_d)

        # 2. Generator and heads: fool D, and keep each output patch tied to its input patch.
        discriminator.requires_grad_(False)
        t.opt_g.zero_grad(set_to_none=True)
        with t.autocast():
            terms = {"G_GAN": self.gan_loss.generator_loss(D_frozen(fake_b)) * self.gan_weight * p.lambda_gan,
                     "NCE": self.nce_loss(real_a, fake_b, flipped)}
            if p.nce_identity:
                terms["NCE_Y"] = self.nce_loss(real_b, fake[real_a.shape[0]:], flipped)
                loss_g = terms["G_GAN"] + 0.5 * (terms["NCE"] + terms["NCE_Y"])
            else:
                loss_g = terms["G_GAN"] + terms["NCE"]
        t.scaler.scale(loss_g).backward()
        t.scaler.step(t.opt_g)
        t.scaler.update()

        return detached({**terms, "D_real": d_real, "D_fake": d_fake})

    def nce_loss(self, source: torch.Tensor, generated: torch.Tensor, flipped: bool) -> torch.Tensor:
        """PatchNCE between the features of ``source`` (keys) and of ``generated`` (queries),
        averaged over layers. ``source`` is unflipped: a flipped run flips the queries back."""
        p, generator, heads = self.params, self.tools.networks["generator"], self.tools.call["nce_heads"]
        queries = generator.encode(generated, p.nce_layers)
        if flipped:
            queries = [feature.flip(3) for feature in queries]
        keys = generator.encode(source, p.nce_layers)
        keys, positions = heads(keys, p.num_patches)
        queries, _ = heads(queries, p.num_patches, positions)
        per_layer = [patch_nce(q, k, source.shape[0], p.nce_t).mean() * p.lambda_nce for q, k in zip(queries, keys)]
        return sum(per_layer) / len(per_layer)
