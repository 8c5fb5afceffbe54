"""Clock reads for ``i2i bench``: calls timed in repeats, summarized as rates."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_iteration(
    runs: dict[str, Callable[[], Any]], iterations: int, warmup: int, repeats: int, device: torch.device,
    between: Callable[[], Any] | None = None,
) -> dict[str, list[float]]:
    """Seconds per call of each of ``runs``, one figure per repeat of ``iterations`` calls;
    the runs alternate within each repeat. ``between`` (untimed) runs before the first
    repeat, between repeats and after the last."""
    for run in runs.values():
        for _ in range(warmup):
            run()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        if between is not None:
            between()
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(iterations):
                run()
            synchronize(device)
            times[name].append((time.perf_counter() - start) / iterations)
    if between is not None:
        between()
    return times


def rate_summary(seconds: list[float], items_per_call: float = 1) -> dict[str, Any]:
    """Items per second: median over repeats, the range, and the range relative to the median."""
    rates = sorted(items_per_call / s for s in seconds)
    median = statistics.median(rates)
    return {"median": median, "min": rates[0], "max": rates[-1], "spread": (rates[-1] - rates[0]) / median, "runs": rates}
