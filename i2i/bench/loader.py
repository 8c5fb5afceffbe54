"""``i2i data bench``: how fast the input pipeline delivers training samples.

Three figures, in samples (pairs) per second, through the trainer's own batches
(``engine.setup.TrainingBatches``: the recipe's batch size, ``num_workers`` and
sample order):

- cold: every sample decoded from its file and resized (``data.cache: none``);
- warm: from the decode-once cache, crop and flip on the CPU;
- on device: from the set held on the training device, crop and flip there.

plus the one-off cost of filling the cache.
"""

from __future__ import annotations

import itertools
import time

import torch

from i2i.data.base import DataError
from i2i.engine.build import build_dataset, resolve_device
from i2i.engine.schedule import EpochSampler
from i2i.engine.setup import TrainingBatches
from i2i.recipe import Recipe


def _rate(recipe: Recipe, dataset, device: torch.device, limit: int) -> float:
    """Samples per second while drawing at most ``limit`` samples, epoch after epoch."""
    sampler = EpochSampler(len(dataset), recipe.train.seed)
    batches = TrainingBatches(recipe, dataset, sampler, device)
    start, count = time.perf_counter(), 0
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        for batch in batches.epoch():
            count += len(batch["input"])
            if count >= limit:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return count / (time.perf_counter() - start)


def bench_loader(recipe: Recipe, samples: int = 200) -> dict[str, float]:
    """The figures above; ``on_device_per_s`` is absent for datasets that cannot run there."""
    device = resolve_device(recipe.train.device)
    uncached = recipe.variant(**{"data.cache": "none", "data.on_device": False})
    cached = recipe.variant(**{"data.cache": "memory", "data.on_device": False})
    results = {"samples": float(samples)}
    results["cold_per_s"] = _rate(uncached, build_dataset(uncached, "train"), device, samples)

    warm = build_dataset(cached, "train")
    start = time.perf_counter()
    warm.prepare()
    results["cache_fill_s"] = time.perf_counter() - start
    results["cache_mb"] = warm.cached_bytes() / 2**20
    results["warm_per_s"] = _rate(cached, warm, device, samples)
    try:
        results["on_device_per_s"] = _rate(cached.variant(**{"data.on_device": True}), warm, device, samples)
    except DataError:  # degrade (its input is built after the crop) and the unpaired sets stay on the CPU
        pass
    return results
