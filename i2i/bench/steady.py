"""How steady a run's pace is: its slowest window of steps against its median window.

A stall (a loader restarting its workers at an epoch boundary, a checkpoint) shows as one
slow window among fast ones, which a mean rate over the whole run hides. The first window
is left out: it holds the warm-up (cuDNN's algorithm search, the CUDA graph's capture, a
compile), paid once per run.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable


def log_window_times(records: Iterable[dict[str, Any]], window: int = 100) -> list[float]:
    """Seconds per window from a run's ``log.jsonl`` records logged every ``window`` steps
    (``train.log_every``): each record's ``steps_per_s`` covers the steps since the one before.
    Evaluation records, and a run's short last window, are not windows."""
    times, last_step = [], 0
    for record in records:
        if "steps_per_s" not in record:
            continue
        if record["step"] - last_step == window and record["steps_per_s"] > 0:
            times.append(window / record["steps_per_s"])
        last_step = record["step"]
    return times


def steadiness(times: list[float]) -> float:
    """The median window's time over the slowest window's (the slowest window's rate over the
    median's: 1 is perfectly steady), the first window left out as warm-up."""
    steady = times[1:]
    if not steady:
        raise ValueError(f"steadiness needs at least 2 windows, got {len(times)}")
    return statistics.median(steady) / max(steady)
