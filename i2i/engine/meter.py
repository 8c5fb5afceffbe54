"""The logged losses: a mean over the steps since the last log line, over every rank."""

from __future__ import annotations

import time

import torch

from i2i.engine.distributed import sum_over_ranks


class LossMeter:
    def __init__(self, device: torch.device, step: int):
        self.device = device
        self.totals: dict[str, torch.Tensor] = {}
        self.kept = 0
        self.since, self.since_step = time.perf_counter(), step

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for key, value in losses.items():
            self.totals[key] = self.totals.get(key, 0.0) + value
        self.kept += 1

    def read(self, keys: list[str], step: int) -> tuple[dict[str, float], float]:
        """(mean losses, steps/s) since the last read, then start over. The keys come from the
        latest step, not from the totals: a rank whose steps were all skipped has no totals,
        yet must add as many values as the others."""
        zero = torch.zeros((), device=self.device)
        sums = [self.totals.get(key, zero).float() for key in keys] + [torch.tensor(float(self.kept), device=self.device)]
        *sums, kept = sum_over_ranks(torch.stack(sums)).tolist()
        now = time.perf_counter()
        rate = (step - self.since_step) / max(now - self.since, 1e-9)
        self.totals, self.kept, self.since, self.since_step = {}, 0, now, step
        return ({key: value / kept for key, value in zip(keys, sums)} if kept else {}), rate
