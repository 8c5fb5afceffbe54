"""``i2i bench speed``'s roofline: the bytes and FLOPs counted per operator, the roof, the sampled limits."""

import pytest
import torch
from torch import nn

from i2i.bench.limit import LimitSampler, counted_gflop
from i2i.bench.roofline import MATMULS, Counted, Limits, OpFigures, count_ops, roofline
from i2i.bench.timing import time_per_iteration
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe

CPU = torch.device("cpu")
FP32 = 4


def only(counted):
    (op,) = counted.ops
    return op


def test_a_convolution_moves_its_input_weight_bias_and_output_once():
    conv = nn.Conv2d(3, 8, kernel_size=4, stride=2, padding=1)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        op = only(count_ops(lambda: conv(image), CPU))
    assert (op.name, op.group, op.dtype, op.calls) == ("convolution", MATMULS, "fp32", 1)
    assert op.flops == 2 * (2 * 16 * 16) * (8 * 3 * 4 * 4)  # batch x output positions, times the weights
    assert op.bytes == FP32 * (2 * 3 * 32 * 32 + 8 * 3 * 4 * 4 + 8 + 2 * 8 * 16 * 16)
    assert op.inputs == "2x3x32x32, 8x3x4x4, 8" and op.seconds > 0


def test_in_place_copies_views_and_broadcasts_move_what_they_touch():
    a, b, broadcast = torch.ones(1000), torch.ones(1000), torch.ones(1).expand(1000)
    assert only(count_ops(lambda: a.add_(b), CPU)).bytes == 3 * 1000 * FP32  # a and b read, a written
    assert only(count_ops(lambda: a.copy_(b), CPU)).bytes == 2 * 1000 * FP32  # the target is not read
    assert only(count_ops(lambda: a.view(10, 100), CPU)).bytes == 0
    assert only(count_ops(lambda: a + broadcast, CPU)).bytes == (1000 + 1 + 1000) * FP32
    assert only(count_ops(lambda: a.to(torch.bfloat16), CPU)).bytes == 1000 * (FP32 + 2)


def test_the_fused_adam_step_is_the_optimizer_and_moves_seven_tensors_per_parameter():
    layer = nn.Linear(10, 10)
    layer(torch.ones(1, 10)).sum().backward()
    adam = torch.optim.Adam(layer.parameters(), fused=True)
    ops = {op.name: op for op in count_ops(adam.step, CPU).ops}
    fused = ops["_fused_adam_"]
    assert {op.group for op in ops.values() if op.bytes} == {"optimizer"}  # the rest: the profiler's markers
    # weights, first and second moments read and written, gradients read; steps: 2 scalars read
    assert fused.bytes == 7 * (100 + 10) * FP32 + 2 * FP32


def test_a_training_step_counts_the_flop_counters_flops_and_every_group(tmp_path):
    trainer = Trainer(Recipe.from_dict(tiny_recipe(train={"fused_adam": True})), run_dir=tmp_path)
    real_a, real_b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    step = lambda: trainer.train_step(real_a, real_b)  # noqa: E731
    step()
    counted = count_ops(step, CPU)
    ops = counted.ops
    assert counted.seconds > sum(op.seconds for op in ops) > 0
    assert sum(op.flops for op in ops) == pytest.approx(counted_gflop(step) * 1e9, rel=1e-12)
    groups = {op.group for op in ops}
    assert {MATMULS, "optimizer", "normalization", "activations"} <= groups
    assert all(op.flops == 0 for op in ops if op.group != MATMULS)


def test_the_roof_is_the_larger_of_compute_and_memory_time_and_the_bound_their_sum():
    limits = Limits({"fp32": 100.0}, dram_gb_per_s=10.0, cache_gb_per_s=40.0, cache_bytes=2**20)
    compute = OpFigures("convolution", "", "fp32", MATMULS, calls=1, flops=1e9, bytes=1e6, seconds=0.02)
    in_cache = OpFigures("leaky_relu", "", "fp32", "activations", calls=2, flops=0, bytes=2e5, seconds=0.001)
    beyond = OpFigures("_fused_adam_", "", "fp32", "optimizer", calls=1, flops=0, bytes=4e8, seconds=0.045)
    bf16 = OpFigures("convolution", "", "bf16", MATMULS, calls=1, flops=1e9, bytes=0, seconds=0.02)
    assert limits.roof(compute) == (0.01, 1e6 / 10e9)  # 1 MB does not fit in half the cache
    assert limits.roof(in_cache) == (0.0, 2e5 / 40e9)  # 100 kB a call does
    assert limits.roof(in_cache, dram_only=True) == (0.0, 2e5 / 10e9)
    assert limits.roof(bf16)[0] == 0.01  # no bf16 peak measured: the best one
    found = roofline(Counted([compute, in_cache, beyond], seconds=0.1), limits, seconds=0.2)
    assert found["bound_s"] == pytest.approx(0.01 + 2e5 / 40e9 + 0.04)
    assert found["bound_compute_s"] == 0.01 and found["bound_memory_s"] == pytest.approx(2e5 / 40e9 + 0.04)
    assert found["fraction_of_bound"] == pytest.approx(found["bound_s"] / 0.2)  # of the call timed apart
    assert found["outside_matmul_share"] == pytest.approx(0.8)
    assert found["shares"] == pytest.approx({"optimizer": 0.45, MATMULS: 0.2, "activations": 0.01,
                                             "between operators": 0.34})
    assert [op["op"] for op in found["furthest"]] == ["convolution", "_fused_adam_", "leaky_relu"]  # by seconds above
    assert found["furthest"][0]["fraction_of_roof"] == pytest.approx(0.5) and found["furthest"][0]["limited_by"] == "compute"


def test_the_sampler_keeps_every_sample_and_reports_the_spread():
    sampler = LimitSampler(CPU, sizes=(32, 64), repeats=1, dram_bytes=2**20)
    sampler()
    sampler()
    summary = sampler.summary()
    assert summary["samples"] == 2 and sampler.peak["best_gflop_per_s"] > 0
    fp32 = summary["matmul_gflop_per_s"]["fp32"]
    assert fp32["size"] in (32, 64) and len(fp32["runs"]) == 2 and fp32["min"] <= fp32["median"] <= fp32["max"]
    assert set(summary["bandwidth_gb_per_s"]) == {"dram", "cache"}
    for rate in summary["bandwidth_gb_per_s"].values():
        assert len(rate["runs"]) == 2 and rate["median"] > 0 and rate["spread"] >= 0
    limits = Limits.of(summary)  # the best sample of each: noise only ever slows a sample down
    assert limits.dram_gb_per_s == summary["bandwidth_gb_per_s"]["dram"]["max"] == max(summary["bandwidth_gb_per_s"]["dram"]["runs"])
    assert limits.cache_gb_per_s == summary["bandwidth_gb_per_s"]["cache"]["max"]
    assert limits.peak_gflop_per_s["fp32"] == fp32["max"] == max(fp32["runs"])


def test_buffers_that_cannot_be_allocated_are_noted_once_and_the_rest_is_measured():
    sampler = LimitSampler(CPU, sizes=(32,), repeats=1, dram_bytes=2**62)
    sampler()
    sampler()
    summary = sampler.summary()
    failed = [note for note in summary["notes"] if "memory bandwidth (dram): not measured" in note]
    assert len(failed) == 1 and "\n" not in failed[0]
    assert summary["matmul_gflop_per_s"]["fp32"]["median"] > 0 and "cache" in summary["bandwidth_gb_per_s"]
    assert Limits.of(summary) is None


def test_the_limits_are_sampled_before_between_and_after_the_repeats():
    events = []
    time_per_iteration({"a": lambda: events.append("a"), "b": lambda: events.append("b")}, iterations=1, warmup=1,
                       repeats=2, device=CPU, between=lambda: events.append("limits"))
    assert events == ["a", "b", "limits", "a", "b", "limits", "a", "b", "limits"]
