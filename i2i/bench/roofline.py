"""The roofline bound of a call (a training step, a generator's forward): the fastest this
machine could run it, operator by operator, and how far each operator is from its roof.

``count_ops`` runs the call once under ``OpCounter``, a ``TorchDispatchMode`` that sees every
aten operator the call runs (after autograd, as ``torch.utils.flop_counter`` does) and records
per operator and input shapes:

- FLOPs: ``torch.utils.flop_counter``'s formulas (matmuls and convolutions, forward and
  backward, 2 per multiply-add), so the sum is ``counted_gflop``'s;
- bytes moved: each tensor it reads counted once, each tensor it writes counted once (its
  outputs and the arguments it changes in place; an ``out=`` argument or the target of
  ``copy_``/``fill_`` is written, not read); views move nothing; a broadcast input counts the
  memory under it. That is a lower bound on the operator's traffic: a kernel that reads its
  input twice, or spills its working set, moves more;
- seconds: the wall clock around the operator alone (the device synchronized on each side),
  and the counted call's own wall clock, so that the time between operators (Python, autograd,
  the dispatcher, and the counter's own bookkeeping: an upper estimate) is its share too;
- its group: convolutions and matmuls (the operators with FLOPs), the optimizer (everything run
  inside an ``Optimizer.step``), normalization, activations, copies and layout, other.

An operator's roof is the larger of its FLOPs over the matmul peak of its dtype and its bytes
over the memory bandwidth: the triad within the last-level cache where one call's bytes fit in
half of it, the triad beyond the cache otherwise. Operators without a FLOP formula (normalization,
activations, Adam, copies) get the memory roof alone: their few FLOPs per byte would only raise
it, so leaving them out can only lower the bound. The bound of the call is the sum of its
operators' roofs; ``roofline`` sets it against the call's timed seconds. The bound is of the call
as its operators split it: a compiled path that fuses an activation into a convolution skips a
round trip the count includes, and can beat it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

from i2i.bench.timing import synchronize

MATMULS = "convolutions and matmuls"
GROUPS = {
    "normalization": {"native_batch_norm", "native_batch_norm_backward", "_native_batch_norm_legit",
                      "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
                      "_batch_norm_with_update", "_batch_norm_no_update", "batch_norm_backward",
                      "native_layer_norm", "native_layer_norm_backward", "native_group_norm",
                      "native_group_norm_backward", "var_mean"},
    "activations": {"relu", "relu_", "leaky_relu", "leaky_relu_", "leaky_relu_backward", "threshold_backward",
                    "tanh", "tanh_", "tanh_backward", "sigmoid", "sigmoid_backward", "hardtanh", "hardtanh_",
                    "gelu", "gelu_backward", "clamp_min", "native_dropout", "native_dropout_backward"},
    "copies and layout": {"copy_", "_to_copy", "clone", "cat", "stack", "constant_pad_nd", "reflection_pad2d",
                          "reflection_pad2d_backward", "slice_backward", "select_backward", "as_strided_scatter",
                          "_unsafe_view", "contiguous", "index", "new_zeros", "zeros_like", "zero_", "fill_"},
}
# Operators that leave the memory they allocate untouched, or return a view under another schema.
MOVES_NOTHING = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view",
                 "lift_fresh", "_reshape_alias", "detach"}
# In-place operators that overwrite their target without reading it.
WRITE_ONLY = {"copy_", "fill_", "zero_", "uniform_", "normal_", "bernoulli_", "random_", "exponential_"}
# Fused optimizers whose schema marks the gradients written: they are only unscaled in place under a grad scaler.
SCALED_GRADIENTS = {"_fused_adam_", "_fused_adamw_", "_fused_sgd_"}
FURTHEST = 5  # operators reported furthest from their roof


@dataclass
class Counted:
    """The operators of one counted call, and its wall-clock seconds under the counter."""

    ops: list["OpFigures"]
    seconds: float


@dataclass
class OpFigures:
    """One operator at one set of input shapes, summed over its calls."""

    name: str
    inputs: str
    dtype: str
    group: str
    calls: int = 0
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0


def dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype).removeprefix("torch."))


def tensor_bytes(tensor: torch.Tensor) -> int:
    """The bytes under a tensor: its elements, or fewer where strides repeat memory (a broadcast)."""
    if tensor.layout != torch.strided:
        return tensor.numel() * tensor.element_size()
    if tensor.numel() == 0:
        return 0
    span = 1 + sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()) if size > 1)
    return min(tensor.numel(), span) * tensor.element_size()


def _tensors(value: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def moved_bytes(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes ``func`` reads and writes (each tensor once), by its schema: see the module's docstring."""
    name = func._overloadpacket.__name__
    schema = func._schema
    if name in MOVES_NOTHING:
        return 0
    written_args = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if not written_args and schema.returns and all(r.alias_info is not None for r in schema.returns):
        return 0  # a view
    read: dict[int, torch.Tensor] = {}
    written: dict[int, torch.Tensor] = {}
    for index, argument in enumerate(schema.arguments):
        value = args[index] if index < len(args) and not argument.kwarg_only else kwargs.get(argument.name)
        writes = argument.alias_info is not None and argument.alias_info.is_write
        if name in SCALED_GRADIENTS and argument.name == "grads" and kwargs.get("grad_scale") is None:
            writes = False
        for tensor in _tensors(value):
            if writes:
                written[id(tensor)] = tensor
            if not writes or not (argument.kwarg_only or name in WRITE_ONLY):
                read[id(tensor)] = tensor
    returned = (out,) if len(schema.returns) == 1 else tuple(out or ())
    for returns, value in zip(schema.returns, returned):
        if returns.alias_info is None:  # else a view, or a written argument counted above
            written.update((id(tensor), tensor) for tensor in _tensors(value))
    return sum(map(tensor_bytes, read.values())) + sum(map(tensor_bytes, written.values()))


def describe_inputs(args: tuple, kwargs: dict) -> tuple[str, str]:
    """The input shapes (a list of tensors as its length) and the dtype of the first floating-point one."""
    shapes, dtype = [], ""
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            shapes.append("x".join(map(str, value.shape)) or "scalar")
        elif isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            shapes.append(f"[{len(value)} tensors]")
        for tensor in _tensors(value):
            if not dtype and tensor.is_floating_point():
                dtype = dtype_name(tensor.dtype)
    return ", ".join(shapes), dtype


class OpCounter(TorchDispatchMode):
    """Per operator and input shapes: calls, FLOPs, bytes moved and seconds (``OpFigures``)."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device = device
        self.ops: dict[tuple[str, str, str], OpFigures] = {}
        self.in_optimizer = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in flop_registry and func is not torch.ops.prim.device.default:
            with self:  # as FlopCounterMode: reach the operators that carry FLOP formulas
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        synchronize(self.device)
        start = time.perf_counter()
        out = func(*args, **kwargs)
        synchronize(self.device)
        seconds = time.perf_counter() - start
        packet = func._overloadpacket
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        name = packet.__name__
        inputs, dtype = describe_inputs(args, kwargs)
        if flops:
            group = MATMULS
        elif self.in_optimizer:
            group = "optimizer"
        else:
            group = next((group for group, names in GROUPS.items() if name in names), "other")
        figures = self.ops.setdefault((name, inputs, group), OpFigures(name, inputs, dtype, group))
        figures.calls += 1
        figures.flops += flops
        figures.bytes += moved_bytes(func, args, kwargs, out)
        figures.seconds += seconds
        return out


def count_ops(call: Callable[[], Any], device: torch.device) -> Counted:
    """The operators of one ``call`` (it runs once), with their FLOPs, bytes and seconds."""
    counter = OpCounter(device)

    def enter(*_: Any) -> None:
        counter.in_optimizer += 1

    def leave(*_: Any) -> None:
        counter.in_optimizer -= 1

    hooks = register_optimizer_step_pre_hook(enter), register_optimizer_step_post_hook(leave)
    try:
        synchronize(device)
        start = time.perf_counter()
        with counter:
            call()
        synchronize(device)
        seconds = time.perf_counter() - start
    finally:
        for hook in hooks:
            hook.remove()
    return Counted(list(counter.ops.values()), seconds)


@dataclass(frozen=True)
class Limits:
    """The measured limits a roof is made of: the best of ``LimitSampler``'s samples of each.
    On a shared machine another process only ever slows a sample down, so the best one is the
    closest to what the hardware does; the median let a fp32 step outrun its own bound (101%
    of it, Zen 4, 2026-12-07: the peak's median 159 GFLOP/s, its best sample 177)."""

    peak_gflop_per_s: dict[str, float]  # matmul, by dtype name
    dram_gb_per_s: float
    cache_gb_per_s: float | None
    cache_bytes: int

    @classmethod
    def of(cls, summary: dict[str, Any]) -> "Limits | None":
        """From ``LimitSampler.summary()``; None without a bandwidth beyond the cache."""
        bandwidth = summary["bandwidth_gb_per_s"]
        if "dram" not in bandwidth:
            return None
        return cls({name: rate["max"] for name, rate in summary["matmul_gflop_per_s"].items()},
                   bandwidth["dram"]["max"], bandwidth.get("cache", {}).get("max"),
                   int(summary["last_level_cache_mib"] * 2**20))

    def roof(self, op: OpFigures, dram_only: bool = False) -> tuple[float, float]:
        """(compute seconds, memory seconds) of ``op``'s calls; its roof is the larger. A dtype
        without its own peak (fp16 on a CPU) gets the best one measured."""
        peak = self.peak_gflop_per_s.get(op.dtype) or max(self.peak_gflop_per_s.values())
        bandwidth = self.dram_gb_per_s
        if not dram_only and self.cache_gb_per_s and op.bytes / max(op.calls, 1) <= self.cache_bytes / 2:
            bandwidth = max(bandwidth, self.cache_gb_per_s)
        return op.flops / (peak * 1e9), op.bytes / (bandwidth * 1e9)


def roofline(counted: Counted, limits: Limits, seconds: float) -> dict[str, Any]:
    """The bound of the ``counted`` call and its fraction at ``seconds`` per call (timed apart,
    without the counter); the share of the counted call's time per group of operators and
    between operators; the operators furthest from their roof, by seconds above it."""
    ops, rows = counted.ops, []
    for op in ops:
        compute, memory = limits.roof(op)
        rows.append((op, max(compute, memory), "compute" if compute >= memory else "memory"))
    bound = sum(roof for _, roof, _ in rows)
    by_group: dict[str, float] = {}
    for op in ops:
        by_group[op.group] = by_group.get(op.group, 0.0) + op.seconds
    op_seconds = sum(by_group.values())
    shares = {group: spent / counted.seconds for group, spent in sorted(by_group.items(), key=lambda item: -item[1])}
    shares["between operators"] = max(0.0, counted.seconds - op_seconds) / counted.seconds
    furthest = sorted(rows, key=lambda row: row[1] - row[0].seconds)[:FURTHEST]
    return {
        "bound_s": bound,
        "bound_compute_s": sum(roof for _, roof, by in rows if by == "compute"),
        "bound_memory_s": sum(roof for _, roof, by in rows if by == "memory"),
        "bound_dram_only_s": sum(max(limits.roof(op, dram_only=True)) for op in ops),
        "seconds": seconds,
        "fraction_of_bound": bound / seconds,
        "gflop": sum(op.flops for op in ops) / 1e9,
        "gb_moved": sum(op.bytes for op in ops) / 1e9,
        "operators": sum(op.calls for op in ops),
        "counted_seconds": counted.seconds,
        "operator_seconds": op_seconds,
        "outside_matmul_share": 1 - by_group.get(MATMULS, 0.0) / counted.seconds,
        "shares": shares,
        "furthest": [{"op": op.name, "inputs": op.inputs, "dtype": op.dtype, "group": op.group, "calls": op.calls,
                      "seconds": op.seconds, "roof_s": roof, "fraction_of_roof": roof / op.seconds if op.seconds else None,
                      "limited_by": by, "gflop": op.flops / 1e9, "mb_moved": op.bytes / 1e6}
                     for op, roof, by in furthest],
    }
