"""The machine's limits for ``i2i bench speed``: the matmul peak and the memory bandwidth,
measured in the same run, and the floating-point work a call does, so that a rate becomes a
fraction of that peak (and, in ``roofline.py``, of the step's roofline bound).

The peak is the best median rate of square matmuls over a few sizes, in fp32 and, where
the hardware computes it natively, in bf16 (emulated bf16 runs at a few GFLOP/s and would
take minutes at these sizes), on the benchmarked device with the process's thread count.
The bandwidth is a STREAM triad (``a = b + 3 c``, two arrays read and one written, the
written one counted once as STREAM does) over buffers four times the last-level cache, and
the same triad over buffers that fit in it together. ``LimitSampler`` takes both again
between the timed repeats of the bench, because on a shared machine a figure read once
can be off by 2x. The work is what ``torch.utils.flop_counter`` counts: matmuls and
convolutions, forward and backward, two FLOPs per multiply-add (BatchNorm, activations and
Adam count nothing).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from i2i.bench import PEAK_SIZES
from i2i.bench.timing import rate_summary, synchronize
from i2i.engine.autotune import native_bf16

MIN_REPEAT_SECONDS = 0.25  # one repeat of a fast matmul is many calls, so the clock's resolution does not matter
MIN_TRIAD_SECONDS = 0.1  # a triad beyond the cache is tens of milliseconds: a few calls make a repeat
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CPU_CACHES = Path("/sys/devices/system/cpu/cpu0/cache")
UNKNOWN_CACHE_BYTES = 32 * 2**20  # where the system does not say: buffers of 4 x 32 MiB still leave most caches


def counted_gflop(call: Callable[[], Any]) -> float:
    """GFLOP of one ``call`` (it runs once)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return counter.get_total_flops() / 1e9


def _seconds_per_call(call: Callable[[], Any], device: torch.device, repeats: int,
                      min_seconds: float = MIN_REPEAT_SECONDS) -> list[float]:
    """Seconds per ``call``, one figure per repeat of at least ``min_seconds``."""
    start = time.perf_counter()
    call()  # warm-up, and how many calls fill a repeat
    synchronize(device)
    calls = max(1, math.ceil(min_seconds / (time.perf_counter() - start)))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        synchronize(device)
        seconds.append((time.perf_counter() - start) / calls)
    return seconds


def _matmul_seconds(size: int, dtype: torch.dtype, device: torch.device, repeats: int) -> list[float]:
    """Seconds per ``size`` x ``size`` matmul, one figure per repeat."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    return _seconds_per_call(lambda: torch.mm(a, b), device, repeats)


def matmul_peak(device: torch.device, sizes: tuple[int, ...] = PEAK_SIZES, repeats: int = 3) -> dict[str, Any]:
    """GFLOP/s of square matmuls per dtype and size (median, range, every repeat) and the best median."""
    rates = {
        f"{name}_{size}": rate_summary(_matmul_seconds(size, DTYPES[name], device, repeats), 2 * size**3 / 1e9)
        for name in matmul_dtypes(device)
        for size in sizes
    }
    best = max(rates, key=lambda key: rates[key]["median"])
    return {"gflop_per_s": rates, "best": best, "best_gflop_per_s": rates[best]["median"],
            "threads": torch.get_num_threads()}


def matmul_dtypes(device: torch.device) -> tuple[str, ...]:
    return ("fp32", "bf16") if native_bf16(device) else ("fp32",)


def last_level_cache_bytes(device: torch.device) -> int | None:
    """The GPU's L2, or the largest CPU cache Linux lists for the first core; None where unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size or None
    sizes = []
    for path in CPU_CACHES.glob("index*/size"):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        if text.rstrip("KMG").isdigit():
            sizes.append(int(text.rstrip("KMG")) * scale)
    return max(sizes) if sizes else None


def triad_gb_per_s(buffer_bytes: int, device: torch.device, repeats: int) -> list[float]:
    """GB/s of ``a = b + 3 c`` over three fp32 buffers of ``buffer_bytes`` each: 3 buffers'
    bytes per call (b and c read, a written once), one figure per repeat. Raises
    ``RuntimeError`` (out of memory) where the buffers cannot be allocated."""
    elements = max(1, buffer_bytes // 4)
    a = torch.empty(elements, device=device)
    b, c = torch.ones(elements, device=device), torch.full((elements,), 0.5, device=device)
    seconds = _seconds_per_call(lambda: torch.add(b, c, alpha=3.0, out=a), device, repeats, MIN_TRIAD_SECONDS)
    return [3 * elements * 4 / s / 1e9 for s in seconds]


class LimitSampler:
    """The matmul peak and the memory bandwidth, sampled again each time it is called.

    The first call times every square size of ``sizes`` (``matmul_peak``) and keeps each
    dtype's fastest size; every call times those sizes and both triads, one repeat each.
    ``summary`` gives each figure's median, range and spread over the calls. A bandwidth
    whose buffers cannot be allocated is noted once and not tried again."""

    def __init__(self, device: torch.device, sizes: tuple[int, ...] = PEAK_SIZES, repeats: int = 3,
                 dram_bytes: int | None = None):
        self.device, self.sizes, self.repeats = device, sizes, repeats
        cache = last_level_cache_bytes(device)
        self.cache_bytes = cache or UNKNOWN_CACHE_BYTES
        # beyond the cache: each buffer 4x the cache; within it: all three together in 3/8 of it
        self.buffers = {"dram": dram_bytes or 4 * self.cache_bytes, "cache": self.cache_bytes // 8}
        self.notes: list[str] = [] if cache else [
            f"last-level cache size unknown on {device.type}: bandwidth buffers sized for {UNKNOWN_CACHE_BYTES // 2**20} MiB"]
        if "bf16" not in matmul_dtypes(device):
            self.notes.append(f"bf16 matmul: not timed (no native bf16 on this {device.type})")
        self.peak: dict[str, Any] | None = None
        self.best_size: dict[str, int] = {}
        self.matmul: dict[str, list[float]] = {}
        self.bandwidth: dict[str, list[float] | None] = {}

    def __call__(self) -> None:
        if self.peak is None:
            self.peak = matmul_peak(self.device, self.sizes, self.repeats)
            for name in matmul_dtypes(self.device):
                key = max((f"{name}_{size}" for size in self.sizes), key=lambda k: self.peak["gflop_per_s"][k]["median"])
                self.best_size[name] = int(key.split("_")[1])
                self.matmul[name] = [self.peak["gflop_per_s"][key]["median"]]
        else:
            for name, size in self.best_size.items():
                self.matmul[name].append(2 * size**3 / 1e9 / _matmul_seconds(size, DTYPES[name], self.device, 1)[0])
        for kind, size in self.buffers.items():
            if kind in self.bandwidth and self.bandwidth[kind] is None:  # failed once: noted, not tried again
                continue
            try:
                rate = triad_gb_per_s(size, self.device, 1)[0]
            except RuntimeError as error:  # out of memory: the figure is missing, the rest goes on
                self.notes.append(f"memory bandwidth ({kind}): not measured: 3 buffers of {size / 2**20:.0f} MiB "
                                  f"could not be allocated on {self.device.type} ({str(error).splitlines()[0]})")
                self.bandwidth[kind] = None
                continue
            self.bandwidth.setdefault(kind, []).append(rate)

    def summary(self) -> dict[str, Any]:
        """Each figure over the samples: median, min, max, spread (range over median), every sample."""
        return {
            "samples": len(next(iter(self.matmul.values()), [])),
            "matmul_gflop_per_s": {name: spread(rates) | {"size": self.best_size[name]} for name, rates in self.matmul.items()},
            "bandwidth_gb_per_s": {kind: spread(rates) | {"buffer_mib": self.buffers[kind] / 2**20}
                                   for kind, rates in self.bandwidth.items() if rates is not None},
            "last_level_cache_mib": self.cache_bytes / 2**20,
            "notes": self.notes,
        }


def spread(values: list[float]) -> dict[str, Any]:
    median = statistics.median(values)
    return {"median": median, "min": min(values), "max": max(values), "spread": (max(values) - min(values)) / median,
            "runs": values}


def achieved(gflop_per_call: float, calls_per_s: float, peak_gflop_per_s: float) -> dict[str, float]:
    """The GFLOP/s of a call at a rate, and its fraction of the peak."""
    gflop_per_s = gflop_per_call * calls_per_s
    return {"gflop_per_s": gflop_per_s, "fraction_of_peak": gflop_per_s / peak_gflop_per_s}
