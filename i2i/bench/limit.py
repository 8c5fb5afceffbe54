"""The machine's limit for ``i2i bench speed``: the matmul peak, measured in the same run,
and the floating-point work a call does, so that a rate becomes a fraction of that peak.

The peak is the best median rate of square matmuls over a few sizes, in fp32 and, where
the hardware computes it natively, in bf16 (emulated bf16 runs at a few GFLOP/s and would
take minutes at these sizes), on the benchmarked device with the process's thread count.
The work is what ``torch.utils.flop_counter`` counts: matmuls and convolutions, forward
and backward, two FLOPs per multiply-add (BatchNorm, activations and Adam count nothing).
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from i2i.bench import PEAK_SIZES
from i2i.bench.timing import rate_summary, synchronize
from i2i.engine.autotune import native_bf16

MIN_REPEAT_SECONDS = 0.25  # one repeat of a fast matmul is many calls, so the clock's resolution does not matter


def counted_gflop(call: Callable[[], Any]) -> float:
    """GFLOP of one ``call`` (it runs once)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 1e9


def _matmul_seconds(size: int, dtype: torch.dtype, device: torch.device, repeats: int) -> list[float]:
    """Seconds per ``size`` x ``size`` matmul, one figure per repeat."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    start = time.perf_counter()
    torch.mm(a, b)  # warm-up, and how many calls fill a repeat
    synchronize(device)
    calls = max(1, math.ceil(MIN_REPEAT_SECONDS / (time.perf_counter() - start)))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        synchronize(device)
        seconds.append((time.perf_counter() - start) / calls)
    return seconds


def matmul_peak(device: torch.device, sizes: tuple[int, ...] = PEAK_SIZES, repeats: int = 3) -> dict[str, Any]:
    """GFLOP/s of square matmuls per dtype and size (median, range, every repeat) and the best median."""
    dtypes = {"fp32": torch.float32} | ({"bf16": torch.bfloat16} if native_bf16(device) else {})
    rates = {
        f"{name}_{size}": rate_summary(_matmul_seconds(size, dtype, device, repeats), 2 * size**3 / 1e9)
        for name, dtype in dtypes.items()
        for size in sizes
    }
    best = max(rates, key=lambda key: rates[key]["median"])
    return {"gflop_per_s": rates, "best": best, "best_gflop_per_s": rates[best]["median"],
            "threads": torch.get_num_threads()}


def achieved(gflop_per_call: float, calls_per_s: float, peak_gflop_per_s: float) -> dict[str, float]:
    """The GFLOP/s of a call at a rate, and its fraction of the peak."""
    gflop_per_s = gflop_per_call * calls_per_s
    return {"gflop_per_s": gflop_per_s, "fraction_of_peak": gflop_per_s / peak_gflop_per_s}
