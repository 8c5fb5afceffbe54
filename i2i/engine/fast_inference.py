"""The generator for inference only, as fast as the device runs it.

A private copy of the generator, switched once into its inference mode and
into channels_last. Two ways to run it (measured in benchmarks/profile_step.py,
docs/engine.md):

- eager: the thin convolutions as matmuls on the CPU (``cpu_speedups``) and the
  weights stored in the low precision the device computes natively, so that no
  call casts them again;
- compiled: ``torch.compile`` with freezing under autocast. Freezing makes the
  weights constants that inductor casts and prepacks for oneDNN once, which
  removes the per-call weight reorders the matmul rewrite works around; it costs
  a compile of a minute or more on a small CPU. Train mode (the reference's test:
  batch statistics, live dropout) compiles too: the copy's BatchNorm layers drop
  their running statistics, which train mode never reads, so no buffer is written
  and every weight freezes (kept, the buffer writes left it unfrozen: 1.8x
  instead of 5x).

Outputs match the fp32 generator to bf16 rounding (about 1e-3).
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable

import torch
from torch import nn

from i2i.engine.build import resolve_precision
from i2i.engine.compiled import CompiledOrEager
from i2i.engine.cpu_speedups import keep_freed_memory, use_matmul_convolutions
from i2i.engine.inference import Mode


def fast_generator(
    generator: nn.Module,
    mode: Mode,
    example: torch.Tensor,
    precision: str = "auto",
    compile: bool = False,
    log_line: Callable[[str], None] = print,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function from fp32 images to fp32 outputs, computing as ``generator`` in ``mode``
    does; ``example`` (on the target device) sizes the CPU matmul rewrite."""
    device = example.device
    dtype = resolve_precision(precision, device)
    if device.type == "cpu":
        keep_freed_memory()
    model = copy.deepcopy(generator).requires_grad_(False)
    model.train(mode == "train")
    if mode == "train":
        for layer in model.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.track_running_stats = False
                layer.running_mean = layer.running_var = layer.num_batches_tracked = None
    model.to(memory_format=torch.channels_last)
    if compile:
        call = CompiledOrEager(model, "default", "generator", log_line, freeze=True)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    else:
        if device.type == "cpu":
            use_matmul_convolutions(model, example.contiguous(memory_format=torch.channels_last))
        call = model.to(dtype)
        autocast = contextlib.nullcontext()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return call(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()

    return run
