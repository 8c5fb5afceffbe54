"""``i2i data bench``: how fast the input pipeline delivers training samples.

Three figures, in samples (pairs) per second, through the recipe's own batch
size and ``num_workers``:

- cold: every sample decoded from its file and resized (``data.cache: none``);
- warm: from the decode-once cache, crop and flip on the CPU (what training uses);
- on device: from the set held on the training device, crop and flip there.

plus the one-off cost of filling the cache.
"""

from __future__ import annotations

import time
from typing import Iterable

import torch
from torch.utils.data import DataLoader

from i2i.data.base import DataError, PairedDataset
from i2i.data.device import DeviceResidentSet
from i2i.engine.build import build_dataset, resolve_device
from i2i.recipe import Recipe


def _rate(batches: Iterable[dict], limit: int, device: torch.device | None = None) -> float:
    """Samples per second while drawing at most ``limit`` samples."""
    start, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch["input"])
        if count >= limit:
            break
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def _loader(dataset: PairedDataset, recipe: Recipe) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=recipe.train.batch_size,
        shuffle=True,
        num_workers=recipe.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(recipe.train.seed),
    )


def bench_loader(recipe: Recipe, samples: int = 200) -> dict[str, float]:
    """The figures above; ``on_device_per_s`` is absent for datasets that cannot run there."""
    data = recipe.data
    uncached = recipe.model_copy(update={"data": data.model_copy(update={"cache": "none", "on_device": False})})
    cached = recipe.model_copy(update={"data": data.model_copy(update={"cache": "memory"})})
    results = {"samples": float(samples)}

    cold = build_dataset(uncached, "train")
    results["cold_per_s"] = _rate(_loader(cold, uncached), samples)

    warm = build_dataset(cached, "train")
    start = time.perf_counter()
    warm.prepare()
    results["cache_fill_s"] = time.perf_counter() - start
    results["cache_mb"] = warm.cache.nbytes / 2**20
    results["warm_per_s"] = _rate(_loader(warm, cached), samples)

    device = resolve_device(recipe.train.device)
    try:
        resident = DeviceResidentSet(warm, device)
    except DataError:  # a dataset that builds its input after the crop (degrade) stays on the CPU
        return results
    order = torch.randperm(len(warm), generator=torch.Generator().manual_seed(recipe.train.seed)).tolist()
    repeats = -(-samples // len(order))
    results["on_device_per_s"] = _rate(resident.batches(order * repeats, recipe.train.batch_size), samples, device)
    return results
