"""What each kind of component promises: the base class it subclasses, how it is built, what it returns.

A registry accepts only subclasses of its kind's contract, so the rest of i2i asks the
type (``isinstance(loss, AdversarialLoss)``) instead of probing attributes. Each
component's parameters are a ``Params`` model; ``i2i.testing`` checks every registered
component against these contracts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Annotated, Any, Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.utils.data import Dataset

# One logit map, or one per scale (a multi-scale discriminator, finest first).
Logits = torch.Tensor | list[torch.Tensor]


class Params(BaseModel):
    """Parameters a recipe may set; a key the model does not know is an error that names it, and
    a float field takes finite values only (``.inf`` and ``.nan`` are errors that name it)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# A loss term's weight: 100 times the largest published one (pix2pix's L1 at 100) is the most a
# recipe may ask; 1e308 would overflow the loss, and even 1e20 Adam's squared gradients, in float32.
MAX_LOSS_WEIGHT = 1e4
LossWeight = Annotated[float, Field(ge=0, le=MAX_LOSS_WEIGHT)]


class Generator(nn.Module, ABC):
    """Built as ``cls(params, in_channels=, out_channels=)``; ``forward`` maps N x in_channels x H x W
    in [-1, 1] to N x out_channels x H x W in [-1, 1] (tanh) for every H and W that divide by
    ``size_multiple``. Subclasses call ``super().__init__(params)``."""

    size_multiple: int  # set from size_multiple_for(params) when built

    def __init__(self, params: Params):
        super().__init__()
        self.size_multiple = self.size_multiple_for(params)

    @classmethod
    @abstractmethod
    def size_multiple_for(cls, params: Params) -> int:
        """What input sides must divide by, from the params alone: recipe validation checks the
        crop with it and ``i2i translate`` pads to it, neither building the network."""

    @abstractmethod
    def forward(self, image: torch.Tensor) -> torch.Tensor: ...


class Discriminator(nn.Module, ABC):
    """Built as ``cls(params, in_channels=)``, where the input is (condition, image) stacked on
    channels; ``forward`` returns logits N x 1 x H' x W', or a list of them (one per scale).
    ``forward_features`` is optional: without it the discriminator cannot train with feature
    matching (pix2pix's ``method.params.feature_matching``)."""

    @abstractmethod
    def forward(self, pair: torch.Tensor) -> Logits: ...

    def forward_features(self, pair: torch.Tensor) -> list[list[torch.Tensor]]:
        """Per scale (finest first), the output of each of its layers, ending with that scale's
        logits as ``forward`` returns them."""
        raise NotImplementedError(f"{type(self).__name__} gives no intermediate features")

    @classmethod
    def gives_features(cls) -> bool:
        return cls.forward_features is not Discriminator.forward_features


class ReconstructionLoss(nn.Module, ABC):
    """Built as ``cls(params)``; compares the generated image with the ground truth (L1 in pix2pix).
    A recipe may have any number, each scaled by its ``weight``."""

    @abstractmethod
    def forward(self, fake: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """A scalar."""


class AdversarialLoss(nn.Module, ABC):
    """Built as ``cls(params)``; the GAN objective on discriminator logits. A recipe has exactly one."""

    @abstractmethod
    def generator_loss(self, fake: Logits) -> torch.Tensor:
        """A scalar: how far the discriminator is from calling the generated images real."""

    @abstractmethod
    def discriminator_loss(self, real: Logits, fake: Logits) -> tuple[torch.Tensor, torch.Tensor]:
        """Two scalars, the real and the fake term (the trainer averages them)."""

    def gradient_penalty(
        self, discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, rank: int = 0, world_size: int = 1
    ) -> torch.Tensor | None:
        """A scalar added to the discriminator's loss, or None. ``rank`` and ``world_size`` let
        every process draw its share of one global batch's random numbers."""
        return None


class PairedDataset(Dataset, ABC):
    """Built as ``cls(params, data=<the recipe's data section>, split=, train=, seed=)``.

    ``dataset[i]`` is ``{"input": in_channels x S x S, "target": out_channels x S x S, "path": str}``,
    float32 in [-1, 1], S = ``data.crop_size``, and depends only on (seed, epoch, i), so a resumed
    run sees the same samples. Subclass ``i2i.data.base.ImagePairDataset``, which does the resize,
    crop, flip, normalisation and decode-once cache around your ``load_pair``."""

    in_channels: int = 3
    out_channels: int = 3
    # Whether a training sample's input and target show the same scene: a method that needs
    # pairs (pix2pix) refuses a set without them at recipe validation.
    pairs: bool = True

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def set_epoch(self, epoch: int) -> None:
        """Called before each epoch; random augmentation follows it."""

    def start_decay_at(self, epoch: int) -> None:
        """Called once by the trainer, before training: the first epoch of the learning-rate decay
        (``train.epochs``), from which ``data.decay_load_size`` applies."""

    def prepare(self) -> None:
        """Called once before training: a place to decode, cache and drop unreadable samples."""

    def unpaired_sizes(self) -> tuple[int, int] | None:
        """None where, in evaluation (``train=False``), sample i's target is the true pair of its
        input. A set without pairs gives (distinct inputs, distinct targets): its evaluation
        samples take input i % the first and target i % the second, so the metrics compare the
        two sets (FID, KID), each image once."""
        return None


@dataclass
class StepTools:
    """What the engine hands a method once it has built everything (``Method.bind``).

    ``call[name]`` is what the step runs for network ``name``: the module itself, or its
    compiled / DDP-wrapped form. ``call_frozen[name]`` runs a discriminator while the
    generators update: under DDP a wrapper would wait for discriminator gradients that never come.
    """

    networks: dict[str, nn.Module]
    call: dict[str, Callable[..., Any]]
    call_frozen: dict[str, Callable[..., Any]]
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Callable[[], AbstractContextManager]
    device: torch.device
    rank: int = 0
    world_size: int = 1


class Method(ABC):
    """A training method: which networks it trains, its training step and the losses it computes.

    Built as ``cls(params, recipe=)``. The engine then calls ``build_networks`` (under the
    run's seeded RNG, so the order of construction is part of reproducibility), puts the
    networks on the device, builds one Adam over ``generator_side`` and one over
    ``discriminator_side``, wraps them for the step (compile, DDP) and calls ``bind``. From
    then on ``train_step(real_a, real_b)`` is one published step: it updates both optimizers
    and returns the detached loss terms to log. The engine keeps the loop, the schedule,
    logging, checkpoints and resume; ``state_dict`` is whatever else the method must keep
    for an exact resume (CycleGAN's image pools).
    """

    generator_side: tuple[str, ...] = ("generator",)
    discriminator_side: tuple[str, ...] = ("discriminator",)
    # Which saved network translates each way ("generator.safetensors" is A -> B for every method).
    directions: dict[str, str] = {"AtoB": "generator"}
    # False where the step draws host-side random numbers, which a captured CUDA graph would freeze.
    graphable: bool = True
    # What the method needs of its data: pairs (each input with its own target, ``PairedDataset.pairs``)
    # or any two sets of images.
    needs_pairs: bool = False

    def __init__(self, params: Params, recipe: Any):
        self.params = params
        self.recipe = recipe
        self.input_channels: dict[str, int] = {}  # per network, filled by build_networks

    @classmethod
    def check_recipe(cls, params: Params, recipe: Any) -> list[str]:
        """Problems of the rest of the recipe for this method, each starting with its YAML path
        (checked when the recipe is validated)."""
        return []

    @abstractmethod
    def build_networks(self, in_channels: int, out_channels: int) -> dict[str, nn.Module]:
        """Every network, generators first, each recorded in ``input_channels``."""

    def bind(self, tools: StepTools) -> None:
        self.tools = tools

    def set_progress(self, step: int, total_steps: int) -> None:
        """Called before each training step with its index (from 0) and the run's length in
        steps, for what changes over a run (a loss weight's schedule). Write what the step reads
        into a tensor in place: a captured CUDA graph replays the step's kernels, not its Python."""

    @abstractmethod
    def train_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> dict[str, torch.Tensor]:
        """One step of both updates; the detached loss terms by name."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
