"""The U-Net's thin convolutions (those ``cpu_speedups`` turns into matmuls), each timed
alone, forward and backward, in every form the engine could run it in:

- ``onednn``: the plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` (oneDNN);
- ``matmul fp32``: ``MatmulConv2d`` with its product in fp32 (reads the fp32 weight where it lies);
- ``matmul cast``: the same product in the autocast dtype (the weight cast first).

``cpu_speedups.FP32_WIDTH`` picks between the last two by the product's width. It was set
on one CPU (Intel Xeon with AMX); this script says, on the machine at hand, which form is
fastest for each layer of the flagship's generator at batch 1, 256x256, under the autocast
dtype the engine would choose (bf16 where the CPU runs it natively). Rounds interleave the
forms, so a noisy neighbour slows them alike; medians over rounds. Before each call a buffer
twice the last-level cache is rewritten, as the rest of the step would.

    .venv/bin/python benchmarks/thin_products.py [--rounds 7] [--dtype bf16|fp32] [--channels-last]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from i2i.bench.limit import last_level_cache_bytes  # noqa: E402
from i2i.engine.autotune import cpu_model, native_bf16  # noqa: E402
from i2i.engine.cpu_speedups import FP32_WIDTH, MATMUL_WIDTH, SWAPS, product_widths, tensors_seen  # noqa: E402
from i2i.models.unet import UNetGenerator, UNetParams  # noqa: E402


def forms(plain: type) -> dict[str, tuple[type, bool]]:
    return {"onednn": (plain, False), "matmul fp32": (SWAPS[plain], True), "matmul cast": (SWAPS[plain], False)}


def time_form(layer: nn.Module, x: torch.Tensor, dtype: torch.dtype, calls: int, evict: torch.Tensor) -> float:
    """Seconds per forward + backward (input and weight gradients) of ``layer`` on ``x``, each
    call after ``evict`` is rewritten: in the real step the other layers' weights and
    activations have pushed this one's weight out of the last-level cache."""
    x = x.detach().requires_grad_()
    seconds = 0.0
    for call in range(calls + 1):  # the first call warms up and is not timed
        evict.add_(1.0)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            y = layer(x)
        y.backward(torch.ones_like(y))
        x.grad = layer.weight.grad = None
        if call:
            seconds += time.perf_counter() - start
    return seconds / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=10, help="calls per timed form per round")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default=None,
                        help="autocast dtype (default: bf16 where the CPU runs it natively)")
    parser.add_argument("--channels-last", action="store_true", help="the network and its input in channels_last")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    name = args.dtype or ("bf16" if native_bf16(cpu) else "fp32")
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[name]

    generator = UNetGenerator(UNetParams(num_downs=8, ngf=64, norm="batch", dropout=0.0))
    example = torch.randn(1, 3, 256, 256)
    if args.channels_last:
        generator.to(memory_format=torch.channels_last)
        example = example.contiguous(memory_format=torch.channels_last)
    widths = {layer: width for layer, width in product_widths(generator, example).items() if width <= MATMUL_WIDTH}
    inputs = {layer: seen[0].clone() for layer, seen in tensors_seen(generator, example, list(widths)).items()}
    plain = {layer: type(layer) for layer in widths}
    evict = torch.zeros(2 * (last_level_cache_bytes(cpu) or 32 * 2**20) // 4)
    times: dict[nn.Module, dict[str, list[float]]] = {layer: {} for layer in widths}
    for _ in range(args.rounds):
        for layer in widths:
            for form, (cls, fp32_product) in forms(plain[layer]).items():
                layer.__class__, layer.fp32_product = cls, fp32_product
                times[layer].setdefault(form, []).append(time_form(layer, inputs[layer], dtype, args.calls, evict))
    layout = "channels_last" if args.channels_last else "contiguous"
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, autocast {name}, {layout}; ms per forward + backward, "
          f"median of {args.rounds} interleaved rounds; FP32_WIDTH = {FP32_WIDTH}")
    totals: dict[str, float] = {}
    for layer, per_form in times.items():
        medians = {form: statistics.median(seconds) * 1e3 for form, seconds in per_form.items()}
        for form, ms in medians.items():
            totals[form] = totals.get(form, 0.0) + ms
        shape = f"{plain[layer].__name__} {layer.in_channels}->{layer.out_channels} on {tuple(inputs[layer].shape[2:])}"
        current = "matmul fp32" if widths[layer] <= FP32_WIDTH else "matmul cast"
        best = min(medians, key=medians.get)
        cells = "  ".join(f"{form} {ms:6.2f}" for form, ms in medians.items())
        print(f"  width {widths[layer]:3d}  {shape:<40} {cells}  engine: {current}, fastest: {best}")
    print("  sum: " + "  ".join(f"{form} {ms:.1f}" for form, ms in totals.items()))


if __name__ == "__main__":
    main()
