"""BatchNorm statistics for eval mode, recomputed for the weights as they are ("precise BN").

During training each BatchNorm layer keeps a running average of batch statistics with
momentum 0.1, taken while the weights moved underneath it; in eval mode those lagging
figures normalise a network they were not measured on. Here they are measured again on
the final weights: every layer's statistics are reset and averaged with equal weight
(momentum None, as ``torch.optim.swa_utils.update_bn``) over a fixed set of training
batches, cropped as in training. The batches are the first of a fixed-seed pass over the
training set, so the result depends on the weights alone.
"""

from __future__ import annotations

import copy
from typing import Iterable, Iterator

import torch
from torch import nn

from i2i.contracts import PairedDataset


def fixed_batches(dataset: PairedDataset, count: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """``count`` input batches: the first of one pass over ``dataset`` in a permutation drawn
    from ``seed``, with the augmentation of epoch 0. ``dataset`` itself is left as it was."""
    view = copy.copy(dataset)  # shares the decoded images; only the epoch differs
    view.set_epoch(0)
    order = torch.randperm(len(view), generator=torch.Generator().manual_seed(seed)).tolist()
    for start in range(0, min(count * batch_size, len(order)), batch_size):
        yield torch.stack([view[index]["input"] for index in order[start : start + batch_size]])


@torch.no_grad()
def recompute_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor], dropout: bool) -> int:
    """Replace the running statistics of ``model``'s BatchNorm layers (in place: pass a copy)
    by their equal-weight average over ``batches``; returns the number of batches seen.
    ``dropout``: whether dropout is active during the pass, as it is when training."""
    layers = [layer for layer in model.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 0
    momenta = {layer: layer.momentum for layer in layers}
    was_training = model.training
    device = next(model.parameters()).device
    model.train(dropout)
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average
        layer.train()
    seen = 0
    # Dropout draws from a seeded fork of the RNG: the same statistics every time, and a
    # training run's random stream untouched.
    try:
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(0)
            for batch in batches:
                model(batch.to(device))
                seen += 1
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        model.train(was_training)
    return seen
