"""Where the flagship's training step and inference spend their time, and what each
engine setting buys: configurations timed interleaved in one process, as ratios.

    .venv/bin/python benchmarks/profile_step.py                 # train + inference ratios
    .venv/bin/python benchmarks/profile_step.py --threads 1     # CPU time is steadier on a busy machine
    .venv/bin/python benchmarks/profile_step.py --profile tuned # torch.profiler table of one configuration, its
                                                                # FLOPs and fraction of the matmul peak
    .venv/bin/python benchmarks/profile_step.py --part infer --compile  # adds compiled inference (slow to build)
    .venv/bin/python benchmarks/profile_step.py --roofline tuned    # every operator of one configuration's step
                                                                # against its roof (i2i/bench/roofline.py)
    .venv/bin/python benchmarks/profile_step.py --roofline tuned --recipe recipes/cut_horse2zebra.yaml

Every configuration is a set of ``train.*`` overrides on recipes/pix2pix_maps.yaml (or
``--recipe``) at 256x256, batch 1, random tensors: data loading is not part of the figures. Each
round runs every configuration in turn, so a noisy neighbour slows all of them
alike; the ratio to the baseline is taken per round, then the median over rounds.
Both wall time and process CPU time are reported: with other work on the machine,
CPU time (at --threads 1) is the steadier measure.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from i2i.bench.limit import LimitSampler, counted_gflop, matmul_peak  # noqa: E402
from i2i.bench.roofline import Limits, count_ops, roofline  # noqa: E402
from i2i.bench.speed import configurations  # noqa: E402
from i2i.engine.autotune import flipped, probed_settings  # noqa: E402
from i2i.engine.fast_inference import fast_generator  # noqa: E402
from i2i.engine.inference import generator_mode  # noqa: E402
from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.modes import DEFAULT_MODE  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402

# `i2i bench speed`'s baseline and tuned, and tuned with each setting the engine probe
# times on this CPU the other way (bf16 only where the CPU has it natively).
CONFIGURATIONS = configurations(torch.device("cpu"))
BASELINE, TUNED = CONFIGURATIONS["baseline"], CONFIGURATIONS["tuned"]
TRAIN_CONFIGS = {"baseline": BASELINE, "tuned": TUNED, "tuned, foreach adam": {**TUNED, "fused_adam": False}}
for key in probed_settings(torch.device("cpu"), {}):
    variant = flipped(TUNED, key)
    TRAIN_CONFIGS[f"tuned, {key} {variant[key]}"] = variant
INFER_CONFIGS = {"baseline": BASELINE, "tuned": TUNED}

# The profile's operators in groups, to say where a step's time goes; the rest is "other".
OPERATOR_GROUPS = {
    "matmuls and convolutions": ("aten::mm", "aten::addmm", "aten::bmm", "aten::convolution_backward",
                                 "aten::mkldnn_convolution", "aten::_convolution", "aten::convolution"),
    # foreach Adam on the CPU runs tensor by tensor: its own ops are these (its mul, div_ and add_ stay "other")
    "Adam": ("aten::_fused_adam_", "aten::sqrt", "aten::addcdiv_", "aten::addcmul_", "aten::lerp_",
             "aten::_foreach_sqrt", "aten::_foreach_addcdiv_", "aten::_foreach_addcmul_", "aten::_foreach_lerp_"),
    "copies: layout and dtype": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "non-finite guard: gradient norms": ("aten::linalg_vector_norm", "aten::_foreach_norm"),
    "BatchNorm": ("aten::native_batch_norm", "aten::native_batch_norm_backward", "aten::_batch_norm_impl_index"),
    "activations": ("aten::leaky_relu", "aten::leaky_relu_backward", "aten::threshold_backward", "aten::relu",
                    "aten::tanh", "aten::tanh_backward", "aten::clamp_min"),
    "unfold and fold (thin matmuls)": ("aten::im2col", "aten::col2im"),
    "concatenation": ("aten::cat",),
}


RECIPE = ROOT / "recipes" / "pix2pix_maps.yaml"


def build(settings: dict, size: int, recipe_file: Path = RECIPE) -> Trainer:
    recipe = yaml.safe_load(recipe_file.read_text())
    recipe["data"] = {"dataset": {"name": "synthetic", "params": {"length": 1, "size": size}}, "load_size": size, "crop_size": size}
    recipe["train"].update(device="cpu", tensorboard=False, **settings)
    return Trainer(Recipe.from_dict(recipe), run_dir=Path(tempfile.gettempdir()) / "i2i-profile-step")


def inputs(trainer: Trainer, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(
        (torch.rand(1, 3, size, size, generator=generator) * 2 - 1).contiguous(memory_format=trainer.memory_format)
        for _ in range(2)
    )


def train_call(trainer: Trainer, size: int):
    real_a, real_b = inputs(trainer, size)
    trainer.generator.train()
    trainer.discriminator.train()
    return lambda: trainer.train_step(real_a, real_b)


def infer_call(trainer: Trainer, size: int, mode: str):
    real_a, _ = inputs(trainer, size)

    def forward():
        with torch.no_grad(), trainer.autocast(), generator_mode(trainer.generator, mode):
            return trainer.method.tools.call["generator"](real_a)

    return forward


def fast_call(trainer: Trainer, size: int, mode: str, compile: bool):
    real_a, _ = inputs(trainer, size)
    run = fast_generator(trainer.generator, mode, real_a, compile=compile)
    return lambda: run(real_a)


def timed(call, iterations: int) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) per call."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(iterations):
        call()
    return (time.perf_counter() - wall) / iterations, (time.process_time() - cpu) / iterations


def compare(calls: dict[str, object], rounds: int, iterations: int, title: str) -> None:
    for call in calls.values():
        call()  # warm-up: oneDNN primitive creation, allocator
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            times[name].append(timed(call, iterations))
    base = times["baseline"]
    print(f"\n{title}  ({rounds} rounds x {iterations} calls, torch threads {torch.get_num_threads()})")
    print(f"{'configuration':34s} {'wall s':>8s} {'cpu s':>8s} {'wall x':>7s} {'cpu x':>7s}")
    for name, runs in times.items():
        wall = statistics.median(w for w, _ in runs)
        cpu = statistics.median(c for _, c in runs)
        wall_ratio = statistics.median(b[0] / r[0] for b, r in zip(base, runs))
        cpu_ratio = statistics.median(b[1] / r[1] for b, r in zip(base, runs))
        print(f"{name:34s} {wall:8.3f} {cpu:8.3f} {wall_ratio:7.2f} {cpu_ratio:7.2f}", flush=True)


def profile(settings: dict, size: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    trainer = build(settings, size)
    step = train_call(trainer, size)
    for _ in range(2):
        step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as result:
        for _ in range(3):
            step()
    print(result.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    print(result.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=20))
    print_groups(result.key_averages())
    print_limit(step)


def print_groups(averages) -> None:
    """Self CPU time per group of operators (OPERATOR_GROUPS), as a share of the profile's."""
    group_of = {name: group for group, names in OPERATOR_GROUPS.items() for name in names}
    seconds: dict[str, float] = {}
    for event in averages:
        group = group_of.get(event.key, "other")
        seconds[group] = seconds.get(group, 0.0) + event.self_cpu_time_total / 1e6
    total = sum(seconds.values())
    print("\nself CPU time by group:")
    for group, spent in sorted(seconds.items(), key=lambda item: -item[1]):
        print(f"  {group:36s} {spent:7.3f} s {spent / total:6.1%}")


def print_limit(step) -> None:
    """The step's counted work, its unprofiled time, and that as a fraction of the matmul peak timed now."""
    gflop = counted_gflop(step)
    wall, cpu = timed(step, 3)
    peak = matmul_peak(torch.device("cpu"))
    rates = ", ".join(f"{key} {rate['median']:.0f}" for key, rate in peak["gflop_per_s"].items())
    print(f"\nstep: {gflop:.1f} GFLOP, {wall:.3f} s wall / {cpu:.3f} s process CPU per step (3 steps; "
          f"{gflop / cpu:.0f} GFLOP per CPU-second), "
          f"{gflop / wall:.0f} GFLOP/s = {gflop / wall / peak['best_gflop_per_s']:.0%} of the matmul peak "
          f"{peak['best_gflop_per_s']:.0f} GFLOP/s ({peak['best']}; GFLOP/s by dtype and size: {rates}; "
          f"{peak['threads']} threads)")


def print_roofline(settings: dict, size: int, steps: int, recipe_file: Path, infer: bool = False) -> None:
    """Every operator of one configuration's (warm) step against its roof, furthest first, and
    the step's bound; the limits sampled before and after the timed steps. ``infer``: the same
    for inference as ``i2i translate`` runs it by default (``fast_generator``, instance mode)."""
    trainer = build(settings, size, recipe_file)
    step = fast_call(trainer, size, DEFAULT_MODE, compile=False) if infer else train_call(trainer, size)
    step()
    sampler = LimitSampler(torch.device("cpu"), (1024, 2048), repeats=1)
    sampler()
    wall, cpu = timed(step, steps)
    sampler()
    counted = count_ops(step, torch.device("cpu"))
    summary = sampler.summary()
    limits = Limits.of(summary)
    if limits is None:
        print("\n".join(summary["notes"]))
        return
    found = roofline(counted, limits, wall)
    rows = []
    for op in counted.ops:
        compute, memory = limits.roof(op)
        rows.append((op.seconds - max(compute, memory), op, max(compute, memory), "compute" if compute >= memory else "memory"))
    print(f"{'operator':28s} {'dtype':5s} {'calls':>5s} {'ms':>8s} {'roof ms':>8s} {'of roof':>7s} {'GFLOP':>7s} "
          f"{'MB':>8s} {'by':7s} {'group':20s} inputs")
    for gap, op, roof, by in sorted(rows, key=lambda row: -row[0])[:40]:
        print(f"{op.name[:28]:28s} {op.dtype:5s} {op.calls:5d} {op.seconds * 1e3:8.1f} {roof * 1e3:8.1f} "
              f"{roof / op.seconds:7.0%} {op.flops / 1e9:7.3f} {op.bytes / 1e6:8.2f} {by:7s} {op.group[:20]:20s} {op.inputs[:80]}")
    shares = ", ".join(f"{group} {share:.0%}" for group, share in found["shares"].items())
    peaks = ", ".join(f"{name} {rate['median']:.0f}" for name, rate in summary["matmul_gflop_per_s"].items())
    bandwidth = ", ".join(f"{kind} {rate['median']:.1f}" for kind, rate in summary["bandwidth_gb_per_s"].items())
    print(f"\nstep {wall:.3f} s wall, {cpu:.3f} s process CPU ({steps} steps); bound {found['bound_s']:.3f} s "
          f"({found['bound_compute_s']:.3f} compute + {found['bound_memory_s']:.3f} memory; "
          f"{found['bound_dram_only_s']:.3f} with every byte beyond the cache) = {found['fraction_of_bound']:.0%} of bound; "
          f"{found['gflop']:.1f} GFLOP, {found['gb_moved']:.2f} GB; matmul GFLOP/s {peaks}; GB/s {bandwidth}; "
          f"{torch.get_num_threads()} threads")
    print(f"counted step {counted.seconds:.3f} s by group: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("train", "infer", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="also time fast_generator compiled (eval: with freezing)")
    parser.add_argument("--profile", choices=sorted(TRAIN_CONFIGS), help="print a torch.profiler table of one configuration's step")
    parser.add_argument("--roofline", choices=sorted(TRAIN_CONFIGS), help="print one configuration's step against its roofline (--part infer: its inference)")
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="with --roofline: the recipe whose step is counted")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.roofline:
        print_roofline(TRAIN_CONFIGS[args.roofline], args.size, args.iterations, args.recipe, infer=args.part == "infer")
        return
    if args.profile:
        profile(TRAIN_CONFIGS[args.profile], args.size)
        return
    if args.part in ("train", "both"):
        trainers = {name: build(settings, args.size) for name, settings in TRAIN_CONFIGS.items()}
        compare({name: train_call(t, args.size) for name, t in trainers.items()}, args.rounds, args.iterations,
                "training step, 256x256 batch 1")
        del trainers
    if args.part in ("infer", "both"):
        trainers = {name: build(settings, args.size) for name, settings in INFER_CONFIGS.items()}
        for mode in ("eval", "train"):
            calls = {name: infer_call(t, args.size, mode) for name, t in trainers.items()}
            calls["fast_generator"] = fast_call(trainers["baseline"], args.size, mode, compile=False)
            if args.compile:
                calls["fast_generator, compiled"] = fast_call(trainers["baseline"], args.size, mode, compile=True)
            compare(calls, args.rounds, 4 * args.iterations, f"inference, {mode}-mode BatchNorm, 256x256 batch 1")


if __name__ == "__main__":
    main()
