"""The generator for inference only, as fast as the device runs it.

A private copy of the generator, switched once into its inference mode and
into the faster memory layout: channels_last on an accelerator and when compiled; on
the CPU, eager, whichever of channels_last and contiguous runs the copy faster on the example,
each timed with its rewrites below in place (bf16 training on the AMX Xeon was faster in
channels_last; inference of the U-Net 256 in fp32 on a Zen 3 and in bf16 on a Zen 4 is faster
contiguous, docs/engine.md). Two ways to run it
(measured in benchmarks/profile_step.py, docs/engine.md):

- eager: the thin convolutions as matmuls on the CPU (``cpu_speedups``) and the
  weights stored in the low precision the device computes natively, so that no
  call casts them again;
- compiled: ``torch.compile`` with freezing under autocast. Freezing makes the
  weights constants that inductor casts and prepacks for oneDNN once, which
  removes the per-call weight reorders the matmul rewrite works around; it costs
  a compile of a minute or more on a small CPU. The modes that normalize each image by
  its own statistics (``instance``, and ``train``: the reference's test, with live
  dropout) compile too: the copy's BatchNorm layers become InstanceNorm layers with
  the same scale and shift, which hold no running statistics, so no buffer is written
  and every weight freezes (figures in docs/engine.md).

Two rewrites of the copy, on the CPU, keep the math (the same sums in another order):
eval-mode BatchNorm folded into the convolution before it, and the 4x4 stride-2
transposed convolutions that run faster as a 2x2 convolution over four output
phases (``SubpixelConvTranspose2d``), chosen by timing both forms on the example.

Outputs match the fp32 generator to bf16 rounding (about 1e-3).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from i2i.engine.build import resolve_precision
from i2i.engine.compiled import CompiledOrEager
from i2i.engine.cpu_speedups import keep_freed_memory, tensors_seen, undo_training_rewrites, use_matmul_convolutions
from i2i.engine.inference import Mode, PerImageNormalization


def fold_batchnorm(model: nn.Module) -> int:
    """Eval mode: every BatchNorm that directly follows a convolution in an ``nn.Sequential``
    becomes part of that convolution's weight and bias; returns how many were folded."""
    folded = 0
    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        names = list(block._modules)
        for conv_name, norm_name in zip(names, names[1:]):
            conv, norm = block._modules[conv_name], block._modules[norm_name]
            if type(conv) not in (nn.Conv2d, nn.ConvTranspose2d) or type(norm) is not nn.BatchNorm2d:  # a subclass may add more (an activation)
                continue
            if norm.running_var is None or not norm.affine:
                continue
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            shift = norm.bias - norm.running_mean * scale
            out_axis = 0 if type(conv) is nn.Conv2d else 1
            with torch.no_grad():
                conv.weight.mul_(scale.reshape([-1 if axis == out_axis else 1 for axis in range(4)]))
                bias = shift if conv.bias is None else conv.bias * scale + shift
            conv.bias = nn.Parameter(bias, requires_grad=False)
            block._modules[norm_name] = nn.Identity()
            folded += 1
    return folded


# Output phase a of a kernel-4, stride-2, padding-1 transposed convolution (rows 2m + a)
# reads input rows m - 1 + a and m + a, through these kernel rows.
PHASE_TAPS = ((3, 1), (2, 0))


class SubpixelConvTranspose2d(nn.Module):
    """A kernel-4, stride-2, padding-1 ``ConvTranspose2d`` as one stride-1 2x2 convolution
    with four times the output channels (one group per output phase), interleaved. On the
    CPU oneDNN runs some of these shapes (many input channels, few positions, or 3 output
    channels) two to three times faster as a plain convolution. Inference only."""

    def __init__(self, layer: nn.ConvTranspose2d):
        super().__init__()
        weight = layer.weight.detach()  # (in, out, 4, 4)
        phases = [
            weight[:, :, PHASE_TAPS[a]][:, :, :, PHASE_TAPS[b]].transpose(0, 1) for a in (0, 1) for b in (0, 1)
        ]
        weight = torch.cat(phases).contiguous(memory_format=torch.channels_last)  # (4 x out, in, 2, 2)
        self.weight = nn.Parameter(weight, requires_grad=False)
        # one copy of the bias per phase
        self.bias = None if layer.bias is None else nn.Parameter(layer.bias.detach().repeat(4), requires_grad=False)
        self.out_channels = layer.out_channels

    @staticmethod
    def fits(layer: nn.Module) -> bool:
        return (
            type(layer) is nn.ConvTranspose2d
            and (layer.kernel_size, layer.stride, layer.padding) == ((4, 4), (2, 2), (1, 1))
            and layer.output_padding == (0, 0)
            and layer.dilation == (1, 1)
            and layer.groups == 1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        # (n, 2, 2, out, h + 1, w + 1): phase (a, b) of output pixel (2m + a, 2k + b) sits at (m + a, k + b)
        y = F.conv2d(x, self.weight, self.bias, padding=1).unflatten(1, (2, 2, self.out_channels))
        rows = [torch.stack([y[:, a, b, :, a : a + h, b : b + w] for b in (0, 1)], dim=-1) for a in (0, 1)]
        return torch.stack(rows, dim=-3).reshape(n, self.out_channels, 2 * h, 2 * w)


def normalize_each_image(model: nn.Module) -> int:
    """Modes ``instance`` and ``train``: every BatchNorm layer is wrapped to normalize each
    image by its own statistics (``per_image_forward``, as ``generator_mode`` does); no
    running statistics are read or written. Returns how many were wrapped."""
    wrapped = 0
    for parent in list(model.modules()):
        for name, layer in list(parent.named_children()):
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, PerImageNormalization(layer))
                wrapped += 1
    return wrapped


def _seconds(call: Callable[[], object], repeats: int = 5) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def fastest_memory_format(models: dict[torch.memory_format, nn.Module], example: torch.Tensor,
                          dtype: torch.dtype) -> torch.memory_format:
    """The layout whose model runs ``example`` faster (eager, in ``dtype``): each model is the
    same network laid out and rewritten for its layout (``rewritten``), because which layout
    oneDNN runs faster depends on the CPU, the dtype and the rewrites (Zen 4, bf16: the plain
    U-Net ran faster channels_last, the rewritten one 1.4x faster contiguous)."""
    seconds = {}
    with torch.inference_mode():
        for memory_format, model in models.items():
            x = example.to(dtype).contiguous(memory_format=memory_format)
            seconds[memory_format] = _seconds(lambda: model(x), repeats=2)
    return min(seconds, key=seconds.get)


def rewritten(model: nn.Module, example: torch.Tensor, dtype: torch.dtype, memory_format: torch.memory_format,
              matmuls: bool) -> tuple[nn.Module, str]:
    """A copy of ``model`` in ``memory_format`` with the CPU rewrites that keep the math (the
    thin convolutions as matmuls where ``matmuls``, the subpixel transposed convolutions where
    faster), sized on ``example``; and what was rewritten, in words."""
    model = copy.deepcopy(model).to(memory_format=memory_format)
    example = example.contiguous(memory_format=memory_format)
    # After the layout, not before: the matmul form keeps its weights contiguous, as its product
    # reads them (laid out again in channels_last, each call would copy them).
    swapped = use_matmul_convolutions(model, example) if matmuls else 0
    subpixel = use_subpixel_where_faster(model, example, dtype, memory_format)
    return model, f"{swapped} thin convolutions as matmuls, {subpixel} transposed convolutions in subpixel form (timed)"


def use_subpixel_where_faster(model: nn.Module, example: torch.Tensor, dtype: torch.dtype,
                              memory_format: torch.memory_format = torch.channels_last) -> int:
    """Swap each transposed convolution ``SubpixelConvTranspose2d.fits`` for its subpixel
    form where that form runs faster on the input it sees for ``example`` (eager, in
    ``dtype`` and ``memory_format``), laid out in ``memory_format``; returns how many were swapped."""
    candidates = [layer for layer in model.modules() if SubpixelConvTranspose2d.fits(layer)]
    inputs = {layer: x for layer, (x, _) in tensors_seen(model, example, candidates).items()}
    swapped = 0
    for parent in list(model.modules()):
        for name, layer in list(parent.named_children()):
            if layer not in inputs:
                continue
            x = inputs[layer].to(dtype).contiguous(memory_format=memory_format)
            plain = copy.deepcopy(layer).to(dtype, memory_format=memory_format)
            subpixel = SubpixelConvTranspose2d(layer).to(dtype, memory_format=memory_format)
            with torch.inference_mode():
                faster = _seconds(lambda: subpixel(x)) < _seconds(lambda: plain(x))
            if faster:  # built outside inference mode: its weights must not be inference tensors
                setattr(parent, name, SubpixelConvTranspose2d(layer).to(memory_format=memory_format))
                swapped += 1
    return swapped


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
    undo_training_rewrites(model)  # a trainer's generator may carry them, sized for its training batch
    model.train(mode == "train")
    if mode == "eval":
        fold_batchnorm(model)
    else:
        normalize_each_image(model)
    if device.type != "cpu":
        memory_format, rewrites = torch.channels_last, "no CPU rewrites"
        model.to(memory_format=memory_format)
    elif compile:  # inductor lays out and prepacks the frozen weights itself: no eager timing, no matmul form
        memory_format = torch.channels_last
        model, rewrites = rewritten(model, example, dtype, memory_format, matmuls=False)
    else:
        candidates = {layout: rewritten(model, example, dtype, layout, matmuls=True)
                      for layout in (torch.channels_last, torch.contiguous_format)}
        memory_format = fastest_memory_format({layout: m.to(dtype) for layout, (m, _) in candidates.items()}, example, dtype)
        model, rewrites = candidates[memory_format]
    if compile:
        call = CompiledOrEager(model, "default", "generator", log_line, freeze=True)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    else:
        call = model.to(dtype)
        autocast = contextlib.nullcontext()

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast:
            return call(x.to(dtype).contiguous(memory_format=memory_format)).float()

    # What was chosen, some of it by timing on a possibly busy machine: a benchmark records it.
    layout = "channels_last" if memory_format == torch.channels_last else "contiguous"
    timed = " (timed)" if device.type == "cpu" and not compile else ""
    run.choices = f"{str(dtype).removeprefix('torch.')}, {layout}{timed}, {rewrites}"
    return run
