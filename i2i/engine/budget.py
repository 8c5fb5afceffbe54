"""``train.time_budget``: a run that stops itself after so much training time.

The clock starts with the training loop: setup, the engine probe and loading a resumed
checkpoint are left out (and reported), so that recipes given the same budget get the same
time to train whatever their startup costs, and a resumed run's budget is its own
invocation's. Samples, checkpoints and evaluations inside the loop count: they are part of
what a recipe costs. The budget is read at every step boundary on rank 0's clock alone; with
several processes its answer reaches every rank at the same step (``main_says``, on the host).

``train.budget_schedule: fit``: after ``WARMUP_STEPS`` untimed steps (compiling, tuning,
caches filling), ``MEASURED_STEPS`` are timed; the steps done plus those the rest of the
budget allows at that rate are the run's estimated length, into which the whole lr schedule
is scaled (``Schedule.of``'s ``fitted_steps``). Every ``REFINE_EVERY`` steps after, the rate
over all the timed steps so far refines the estimate until the lr's decay begins: 20 steps
read a rate off by up to 10% on a shared CPU (maps at 15 minutes: a run fitted to 2242 steps
stopped 89 s early), and a change before the decay moves no lr.
"""

from __future__ import annotations

import time

import torch

from i2i.engine.distributed import host_group, main_says

WARMUP_STEPS = 20
MEASURED_STEPS = 20
REFINE_EVERY = 50


class TimeBudget:
    def __init__(self, seconds: float, device: torch.device, world_size: int):
        self.seconds, self.device, self.world_size = seconds, device, world_size
        self.group = host_group() if world_size > 1 else None
        self.started, self.first_step, self.timed_from = 0.0, 0, 0.0
        self.spent_after = 0.0  # the loop's time when the budget was found spent

    def start(self, step: int) -> None:
        self.started, self.first_step = time.perf_counter(), step

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def spent(self) -> bool:
        """Whether the budget is spent: rank 0's clock, every rank's answer."""
        self.spent_after = self.elapsed()
        spent = self.spent_after >= self.seconds
        return main_says(spent, self.group) if self.world_size > 1 else spent

    def measured_rate(self, step: int) -> float | None:
        """Steps per second over every timed step so far, at the step that ends the first
        ``MEASURED_STEPS`` and every ``REFINE_EVERY`` after; None at any other."""
        timed = step - self.first_step - WARMUP_STEPS
        if timed == 0:
            self.timed_from = self.device_time()
        elif timed >= MEASURED_STEPS and (timed - MEASURED_STEPS) % REFINE_EVERY == 0:
            return timed / (self.device_time() - self.timed_from)
        return None

    def estimated_steps(self, step: int, rate: float) -> int:
        """``step`` plus the steps the rest of the budget allows at ``rate``."""
        return step + int(rate * max(0.0, self.seconds - self.elapsed()))

    def device_time(self) -> float:
        """The clock once the device has done the work queued so far (CUDA runs ahead of the host)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def describe(seconds: float) -> str:
    """900 -> '15m (900 s)', 5400 -> '1h30m (5400 s)', 1.5 -> '1.5 s': as the recipe most likely wrote it."""
    if seconds < 60:
        return f"{seconds:g} s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "", f"{secs:g}s" if secs else ""]
    return f"{''.join(parts)} ({seconds:g} s)"
