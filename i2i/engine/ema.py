"""An exponential moving average of a network's parameters (``train.ema``).

Every ``every`` training steps, each averaged parameter moves towards the trained one:
``average += (1 - d ** every) * (parameter - average)``, the decay of ``every`` steps at
once (reading 54M parameters each step would cost about a tenth of a CPU training step).
The per-step decay ``d`` warms up as ``min(decay, (1 + n) / (10 + n))`` over the ``n``
steps since ``start_step``, so a short run averages over its recent steps instead of
its random start; until ``start_step`` the average is a plain copy. Only parameters are averaged: BatchNorm's
running statistics are recomputed for the averaged weights (``precise_bn``).

The average is a function of the trained weights and the step alone, so saving its
tensors is enough to resume it exactly.
"""

from __future__ import annotations

import torch
from torch import nn


class ParameterAverage:
    def __init__(self, model: nn.Module, decay: float, start_step: int = 0, every: int = 1):
        self.decay, self.start_step, self.every = decay, start_step, every
        self.names = [name for name, _ in model.named_parameters()]
        self.live = [parameter.detach() for parameter in model.parameters()]
        self.averaged = [parameter.detach().clone() for parameter in self.live]

    def decay_at(self, step: int) -> float:
        """The decay of the update made after training step ``step`` (0 copies)."""
        steps = step - self.start_step
        if steps <= 0:
            return 0.0
        return min(self.decay, (1 + steps) / (10 + steps)) ** self.every

    @torch.no_grad()
    def update(self, step: int) -> None:
        """After training step ``step``: fold in the weights, at every ``every``-th step and
        at ``start_step`` and before (the copies)."""
        if step > self.start_step and (step - self.start_step) % self.every:
            return
        torch._foreach_lerp_(self.averaged, self.live, 1.0 - self.decay_at(step))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.averaged))

    @torch.no_grad()
    def load_state_dict(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = [name for name in self.names if name not in tensors]
        if missing:
            raise KeyError(f"no averaged value for {', '.join(missing[:5])}")
        torch._foreach_copy_(self.averaged, [tensors[name] for name in self.names])
