"""An exponential moving average of a network's parameters (``train.ema``).

Every ``every`` training steps, each averaged parameter moves towards the trained one:
``average += (1 - d ** every) * (parameter - average)``, the decay of ``every`` steps at
once (reading 54M parameters each step would cost about a tenth of a CPU training step).
The per-step decay ``d`` warms up as ``min(decay, (1 + n) / (power + 2 + n))`` over the ``n``
steps since ``start_step``, so a short run averages over its recent steps instead of
its random start; until ``start_step`` the average is a plain copy. Until ``decay`` is reached
(after about ``(power + 1) * 1000`` steps at 0.999) this is a power-function average: step
``k`` weighs about ``k ** power``, so the average is centred at ``(power + 1) / (power + 2)``
of the run with a width (standard deviation) of
``sqrt((power + 1) / (power + 3)) / (power + 2)`` of it (Karras et al. 2024): 0.09 at the
default 8, 0.14 at 4. Only parameters are averaged: BatchNorm's
running statistics are recomputed for the averaged weights (``precise_bn``).

The average is a function of the trained weights and the step alone, so saving its
tensors is enough to resume it exactly.
"""

from __future__ import annotations

import torch
from torch import nn


class ParameterAverage:
    def __init__(self, model: nn.Module, decay: float, start_step: int = 0, every: int = 1, power: float = 8.0):
        self.decay, self.start_step, self.every, self.power = decay, start_step, every, power
        self.names = [name for name, _ in model.named_parameters()]
        self.live = [parameter.detach() for parameter in model.parameters()]
        self.averaged = [parameter.detach().clone() for parameter in self.live]

    def decay_at(self, step: int) -> float:
        """The decay of the update made after training step ``step`` (0 copies)."""
        steps = step - self.start_step
        if steps <= 0:
            return 0.0
        return min(self.decay, (1 + steps) / (self.power + 2 + steps)) ** self.every

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
