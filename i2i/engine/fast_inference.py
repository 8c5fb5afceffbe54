"""The generator for inference only, as fast as the device runs it.

A private copy of the generator, switched once into its inference mode, in
channels_last, with its thin convolutions as matmuls on the CPU
(``cpu_speedups``) and its weights stored in the low precision the device
computes natively, so that no call casts the weights again. On request it is
compiled; in eval mode with freezing, which turns the weights into constants
that inductor folds and prepacks (the best eval-mode figure, after a compile of
a minute or more on a small CPU). Train-mode inference (the reference's batch
statistics and live dropout) is not frozen: its BatchNorm reads the batch.
Outputs match the fp32 generator to bf16 rounding (about 1e-3).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn

from i2i.engine.build import resolve_precision
from i2i.engine.compiled import CompiledOrEager
from i2i.engine.cpu_speedups import use_matmul_convolutions
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
    model = copy.deepcopy(generator).requires_grad_(False)
    model.train(mode == "train")
    for layer in model.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = 0.0  # train mode: batch statistics without moving the running ones
    model.to(memory_format=torch.channels_last)
    if device.type == "cpu":
        use_matmul_convolutions(model, example.contiguous(memory_format=torch.channels_last))
    model.to(dtype)
    call = CompiledOrEager(model, "default", "generator", log_line, freeze=mode == "eval") if compile else model

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return call(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()

    return run
