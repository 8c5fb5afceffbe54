"""Two CPU rewrites of the training step that keep its math, and one allocator setting.

1. Convolutions over few positions as one plain matrix product. In the U-Net's
inner blocks (512 channels at 1x1 to 16x16) a convolution is a thin product
against a large weight (4-8M values). On the CPU, oneDNN spends
that layer's time reordering the weight into its blocked layout, forward and
backward, every step; ``unfold``/``fold`` around one ``matmul`` reads the weight
where it lies. Where the product is thin enough to be bound by reading the
weight, fp32 beats casting the weight to bf16 first. The math is the same
convolution; only the summation order differs.

2. Dense gradients into BatchNorm. With channels_last, the gradient that reaches
a block feeding a skip concatenation is a channel slice of the concatenation's
gradient; BatchNorm's backward takes a slow strided path on it. One copy into the
output's own layout avoids that.

3. Freed memory kept in the process (glibc). By default glibc serves big blocks
(an activation or gradient of several MiB) with fresh ``mmap`` pages and unmaps them
on free, so every step faults in and zeroes the same hundreds of MiB again.

The figures behind each: docs/engine.md (from ``benchmarks/profile_step.py``).
"""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

# Columns of the product (batch x positions it runs over) up to which ...
FP32_WIDTH = 16  # ... an fp32 product beats casting the weight to the autocast dtype
MATMUL_WIDTH = 64  # ... a matmul beats oneDNN's convolution


def _compute_dtype(layer: nn.Module, x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device) and not layer.fp32_product:
        return torch.get_autocast_dtype(device)
    return layer.weight.dtype


class MatmulConv2d(nn.Conv2d):
    fp32_product = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out_h, out_w = (
            (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
            for size, pad, dil, k, stride in zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)
        )
        with torch.autocast(x.device.type, enabled=False):
            dtype = _compute_dtype(self, x)
            cols = F.unfold(x.to(dtype), self.kernel_size, self.dilation, self.padding, self.stride)
            out = cols.transpose(1, 2) @ self.weight.to(dtype).flatten(1).t()  # (n, positions, out channels)
            if self.bias is not None:
                out = out + self.bias.to(dtype)
        return out.reshape(n, out_h, out_w, -1).permute(0, 3, 1, 2)  # a channels_last view


class MatmulConvTranspose2d(nn.ConvTranspose2d):
    fp32_product = False

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        n, channels, h, w = x.shape
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation)
        size = [
            (length - 1) * stride - 2 * pad + dil * (k - 1) + extra + 1
            for length, stride, pad, dil, k, extra in zip(
                (h, w), self.stride, self.padding, self.dilation, self.kernel_size, output_padding
            )
        ]
        with torch.autocast(x.device.type, enabled=False):
            dtype = _compute_dtype(self, x)
            rows = x.to(dtype).permute(0, 2, 3, 1).reshape(n, h * w, channels)
            cols = rows @ self.weight.to(dtype).flatten(1)  # (n, positions, out channels x kernel)
            out = F.fold(cols.transpose(1, 2), size, self.kernel_size, self.dilation, self.padding, self.stride)
            if self.bias is not None:
                out = out + self.bias.to(dtype)[:, None, None]
        return out


SWAPS = {nn.Conv2d: MatmulConv2d, nn.ConvTranspose2d: MatmulConvTranspose2d}


def tensors_seen(
    model: nn.Module, example: torch.Tensor, layers: list[nn.Module]
) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of each of ``layers`` in one forward of ``example``, run in eval
    mode so that the probe does not move BatchNorm's running statistics."""
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        seen[layer] = (inputs[0], output)

    hooks = [layer.register_forward_hook(record) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.inference_mode():
            model(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return seen


def product_widths(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, int]:
    """Each plain convolution's product width on ``example``'s shape: output positions
    for a convolution, input positions for a transposed one, times the batch."""
    layers = [
        layer for layer in model.modules()
        if type(layer) in SWAPS and layer.groups == 1 and layer.padding_mode == "zeros"
    ]
    widths = {}
    for layer, (x, y) in tensors_seen(model, example, layers).items():
        source = y if isinstance(layer, nn.Conv2d) else x
        widths[layer] = source.shape[0] * source.shape[2] * source.shape[3]
    return widths


def use_matmul_convolutions(model: nn.Module, example: torch.Tensor) -> int:
    """Turn the convolutions that run over at most ``MATMUL_WIDTH`` columns on
    ``example``'s shape into their matmul form, in place (same parameters, same
    state_dict); returns how many were turned. Their weights go back to the
    contiguous layout the product reads."""
    swapped = 0
    for layer, width in product_widths(model, example).items():
        if width > MATMUL_WIDTH:
            continue
        layer.__class__ = SWAPS[type(layer)]
        layer.fp32_product = width <= FP32_WIDTH
        layer.weight.data = layer.weight.data.contiguous()
        swapped += 1
    return swapped


def _dense_output_gradient(layer: nn.Module, inputs, output: torch.Tensor) -> None:
    if not output.requires_grad:
        return
    channels_last = output.dim() == 4 and output.is_contiguous(memory_format=torch.channels_last)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # A tensor hook, not a wrapping Function: the output stays the same tensor, so an
    # in-place activation after it (timm's ReLU(inplace=True)) still works, and the
    # hook still sees the gradient that enters BatchNorm's backward.
    output.register_hook(lambda grad: grad.contiguous(memory_format=memory_format))


def use_dense_batchnorm_gradients(model: nn.Module) -> int:
    """Hook every BatchNorm so the gradient reaching it is dense; returns how many."""
    layers = [layer for layer in model.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.register_forward_hook(_dense_output_gradient)
    return len(layers)


def undo_training_rewrites(model: nn.Module) -> None:
    """Both rewrites off again, in place (for an inference copy of a trained network)."""
    plain = {rewritten: original for original, rewritten in SWAPS.items()}
    for layer in model.modules():
        if type(layer) in plain:
            layer.__class__ = plain[type(layer)]
        for key, hook in list(layer._forward_hooks.items()):
            if hook is _dense_output_gradient:
                del layer._forward_hooks[key]


# mallopt parameters from glibc's malloc.h
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Process-wide: big allocations come from the heap instead of ``mmap`` and freed
    memory is not returned to the system, so each step reuses pages already mapped.
    The process keeps its peak memory. Returns False where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
