"""Which samples each step sees, and at which learning rate."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.utils.data import Sampler

from i2i.recipe import TrainSection


class EpochSampler(Sampler[int]):
    """A fresh permutation per epoch from (seed, epoch), dealt out round-robin over ranks,
    able to start part-way through an epoch so that a resumed run sees the same order."""

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1):
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self):
        order = torch.randperm(self.length, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        per_rank = math.ceil(self.length / self.world_size)
        order = order.repeat(math.ceil(per_rank * self.world_size / self.length))[: per_rank * self.world_size]
        return iter(order[self.rank :: self.world_size][self.start :].tolist())

    def __len__(self) -> int:
        return math.ceil(self.length / self.world_size) - self.start


def linear_decay(epoch: int, epochs: int, epochs_decay: int) -> float:
    """The reference schedule: 1 for ``epochs``, then linear towards 0 over ``epochs_decay``."""
    return 1.0 - max(0, epoch + 1 - epochs) / float(epochs_decay + 1)


@dataclass(frozen=True)
class Schedule:
    """The run's length in steps, for a dataset of ``samples`` pairs dealt over ``world_size`` ranks,
    and its learning rate: ``epochs`` at the initial rate, then ``epochs_decay`` of linear decay,
    each epoch of the data's length, or, fitted to a time budget, the whole schedule compressed
    (or stretched) into ``fitted_steps``."""

    steps_per_epoch: int
    total_steps: int
    epochs: int
    epochs_decay: int
    fitted_steps: int | None = None

    @classmethod
    def of(cls, cfg: TrainSection, samples: int, world_size: int, fitted_steps: int | None = None) -> Schedule:
        steps_per_epoch = math.ceil(math.ceil(samples / world_size) / cfg.batch_size)
        epochs = cfg.epochs + cfg.epochs_decay
        total = fitted_steps or steps_per_epoch * epochs
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps) if epochs else cfg.max_steps
        return cls(steps_per_epoch, total, cfg.epochs, cfg.epochs_decay, fitted_steps)

    def lr_factor(self, step: int) -> float:
        """The learning rate's factor at ``step`` (from 0): per epoch of the data, or, fitted, per
        (epochs + epochs_decay)-th of the fitted steps (in integers: the same factor on every rank
        and after a resume)."""
        if self.fitted_steps:
            return linear_decay(step * (self.epochs + self.epochs_decay) // self.fitted_steps, self.epochs,
                                self.epochs_decay)
        return linear_decay(step // self.steps_per_epoch, self.epochs, self.epochs_decay)

    def decaying(self, step: int) -> bool:
        """Whether the lr has left its initial rate at ``step``."""
        return self.lr_factor(step) < 1.0

    def step_from(self, step: int, saved: Schedule, saved_world_size: int, world_size: int) -> int:
        """A step saved under another number of processes, as a step of this run: the same
        epoch, and the same number of samples into it."""
        epoch, offset = divmod(step, saved.steps_per_epoch)
        return epoch * self.steps_per_epoch + offset * saved_world_size // world_size
