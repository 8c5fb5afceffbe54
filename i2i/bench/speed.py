"""``i2i bench speed``: training and inference throughput of three configurations.

All run in one process on the same recipe: ``baseline`` is the reference engine (the
published eager fp32 step: contiguous tensors, foreach Adam); ``tuned`` is the fast
engine's static choice for the device (``autotune.static_settings``), every setting
pinned; ``default`` pins nothing: what ``i2i run`` chooses on this machine, probe and
cache included. Training is timed through ``Trainer.train_step`` on one fixed batch
of the recipe's crop size (a real one when the data folder is there, random tensors
otherwise), so data loading is not part of the figure; ``tuned`` and ``default``
alternate round by round, so that their ratio is measured under the same load.
Inference is timed on the plain generator for ``baseline`` and through the engine's
inference path (``fast_generator``, compiled with freezing unless
``--no-compile-inference``) for ``tuned``. Each figure is timed ``repeats`` times after
``warmup`` untimed iterations, with the device synchronized before every clock read;
the median and the range are kept.

The record also holds how close each median rate comes to the machine's limits, measured
in the same run and again before, between and after the timed repeats (``limit.LimitSampler``:
the matmul peak and the memory bandwidth, with their spread): the FLOPs of each
configuration's training step and of the generator's forward, counted by
``torch.utils.flop_counter`` on one untimed call, as achieved GFLOP/s and their fraction of
the best peak; and the roofline bound of each timed call (``roofline.py``: per operator, the
larger of its FLOPs over the peak and its bytes over the bandwidth), counted on one more
untimed call after the timing, as the fraction of that bound the median rate reaches, the
operators furthest from their roof and the share of the time outside convolutions and matmuls.
"""

from __future__ import annotations

import gc
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from i2i.bench import PEAK_SIZES, RESULTS_DIR
from i2i.bench.limit import LimitSampler, achieved, counted_gflop
from i2i.bench.records import append_record, environment
from i2i.bench.roofline import Counted, Limits, count_ops, roofline
from i2i.bench.timing import rate_summary, time_per_iteration
from i2i.engine.autotune import REFERENCE, static_settings
from i2i.engine.build import build_dataset, resolve_device
from i2i.engine.fast_inference import fast_generator
from i2i.engine.inference import generator_mode
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe
from i2i.errors import I2IError
from i2i.modes import MODES


def configurations(device: torch.device) -> dict[str, dict[str, Any]]:
    """The ``train.*`` overrides of each configuration."""
    return {
        "baseline": {"engine": "reference", **REFERENCE},
        "tuned": {"engine": "fast", **static_settings(device)},
        "default": {},
    }


class PeakMemory:
    """CUDA: peak allocated bytes. CPU: the process's peak resident set (VmHWM), reset at
    the start where the kernel allows it (else the peak since the process began)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_peak_allocated" if device.type == "cuda" else "process_peak_rss"
        self.held: float | None = None  # the peak before the last call run ``outside`` the count

    def reset(self) -> None:
        self.held = None
        self._reset_peak()

    def outside(self, call: Callable[[], Any]) -> None:
        """Run ``call`` (the limit probes: buffers of hundreds of MiB) without counting its memory:
        the peak so far is kept, and the counter starts again after the call."""
        held = self.read_mib()
        call()
        self.held = held
        self._reset_peak()

    def _reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def read_mib(self) -> float | None:
        peaks = [peak for peak in (self.held, self._peak_mib()) if peak is not None]
        return max(peaks) if peaks else None

    def _peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return None


def bench_recipe(recipe_path: Path, overrides: list[str], device: torch.device) -> tuple[Recipe, bool]:
    """The recipe as benchmarked, and whether its training data is there. Without data,
    the trainer is built on the synthetic dataset at the recipe's sizes and fed random tensors."""
    quiet = [f"train.device={device}", "data.cache=none", "data.num_workers=0", "data.on_device=false"]
    recipe = Recipe.from_file(recipe_path, [*overrides, *quiet])
    try:
        build_dataset(recipe, "train", train=True)
        return recipe, True
    except I2IError:
        data = recipe.model_dump(mode="json")
        data["data"]["dataset"] = {"name": "synthetic", "params": {"size": recipe.data.load_size, "length": 1}}
        return Recipe.from_dict(data, f"{recipe_path} (synthetic stand-in for missing data)"), False


def first_batch(trainer: Trainer, real_data: bool) -> tuple[torch.Tensor, torch.Tensor]:
    size, batch = trainer.recipe.data.crop_size, trainer.cfg.batch_size
    if real_data:
        item = next(iter(trainer.batches.epoch()))
        real_a, real_b = item["input"], item["target"]
    else:
        generator = torch.Generator().manual_seed(trainer.cfg.seed)
        real_a = torch.rand(batch, trainer.in_channels, size, size, generator=generator) * 2 - 1
        real_b = torch.rand(batch, trainer.out_channels, size, size, generator=generator) * 2 - 1
    return tuple(t.to(trainer.device).contiguous(memory_format=trainer.memory_format) for t in (real_a, real_b))


def plain_forward(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), trainer.autocast():
        return trainer.generator(images)  # only the baseline runs it: the reference engine never compiles


def build(recipe: Recipe, settings: dict[str, Any], real_data: bool) -> tuple[Trainer, torch.Tensor, torch.Tensor]:
    """A trainer of ``recipe`` with the ``train.*`` ``settings``, and its fixed batch."""
    trainer = Trainer(recipe.variant(**{f"train.{key}": value for key, value in settings.items()}),
                      run_dir=Path(tempfile.gettempdir()) / "i2i-bench-speed")  # never written: step and generator only
    trainer.generator.train()
    trainer.discriminator.train()
    return (trainer, *first_batch(trainer, real_data))


def describe(trainer: Trainer, settings: dict[str, Any], train: list[float], gflop_per_step: float) -> dict[str, Any]:
    return {
        "settings": settings,
        "engine": trainer.engine.settings,
        "engine_source": trainer.engine.source,
        "engine_reasons": trainer.engine.reasons,
        "autocast": str(trainer.amp_dtype).removeprefix("torch."),
        "train_steps_per_s": rate_summary(train),
        "train_images_per_s": rate_summary(train, trainer.cfg.batch_size),
        "train_gflop_per_step": gflop_per_step,
    }


def generator_gflop(trainer: Trainer, images: torch.Tensor) -> float:
    """GFLOP of the generator's forward on one image (either mode: BatchNorm and dropout count nothing)."""
    with torch.no_grad(), generator_mode(trainer.generator, "eval"):
        return counted_gflop(lambda: trainer.generator(images[:1]))


def add_roofline_figures(config: dict[str, Any], operators: dict[str, Counted], limits: Limits) -> None:
    """The roofline bound of ``config``'s training step and inference calls (``operators``: by
    ``train`` or inference key), and the fraction of it their median rates reach."""
    if "train" in operators:
        config["train_roofline"] = roofline(operators["train"], limits, 1 / config["train_steps_per_s"]["median"])
        config["train_fraction_of_bound"] = config["train_roofline"]["fraction_of_bound"]
    for key, counted in operators.items():
        if key == "train":
            continue
        batch = int(key.rsplit("batch", 1)[1])
        found = roofline(counted, limits, batch / config["inference_images_per_s"][key]["median"])
        config.setdefault("inference_roofline", {})[key] = found
        config.setdefault("inference_fraction_of_bound", {})[key] = found["fraction_of_bound"]


def train_operators(name: str, step: Callable[[], Any], gflop_per_step: float, device: torch.device,
                    notes: list[str]) -> dict[str, Counted]:
    """The operators of one more (warm, untimed) step, where the counter sees all of the step's
    FLOPs; else a note: a CUDA graph replays, or a compiled step runs, without them."""
    counted = count_ops(step, device)
    seen = sum(op.flops for op in counted.ops) / 1e9
    if abs(seen - gflop_per_step) > 1e-9 * max(gflop_per_step, 1.0):
        notes.append(f"{name}: no roofline of the training step: its operators show {seen:.4g} of its "
                     f"{gflop_per_step:.4g} GFLOP (a CUDA graph or compiled step hides them)")
        return {}
    return {"train": counted}


def add_limit_figures(config: dict[str, Any], gflop_per_image: float, peak_gflop_per_s: float) -> None:
    """The GFLOP/s and fraction of the matmul peak of ``config``'s median rates."""
    train = achieved(config["train_gflop_per_step"], config["train_steps_per_s"]["median"], peak_gflop_per_s)
    config.update({f"train_{key}": value for key, value in train.items()})
    if "inference_images_per_s" in config:
        config["inference_gflop_per_image"] = gflop_per_image
        infer = {key: achieved(gflop_per_image, rate["median"], peak_gflop_per_s)
                 for key, rate in config["inference_images_per_s"].items()}
        for figure in ("gflop_per_s", "fraction_of_peak"):
            config[f"inference_{figure}"] = {key: value[figure] for key, value in infer.items()}


def inference(
    trainer: Trainer, images: torch.Tensor, infer_batch: int, timing: dict[str, int], fast: bool, compile: bool
) -> tuple[dict[str, Any], dict[str, Counted]]:
    """Inference figures of ``trainer``'s generator, plain or through the engine's path, and the
    operators of each timed call (of its eager form where it is compiled: the counter cannot see
    inside inductor's kernels, and the eager form runs the same math)."""
    found: dict[str, Any] = {"inference_images_per_s": {}, "inference_notes": []}  # notes: e.g. a compile fell back to eager
    operators = {}
    precision = trainer.engine.settings["precision"]
    for mode in MODES:  # instance is what translate runs by default; eval folds BatchNorm, instance cannot
        for batch in sorted({1, infer_batch}):
            batch_images = images[:1].expand(batch, -1, -1, -1).contiguous(memory_format=trainer.memory_format)
            key = f"{mode}_batch{batch}"
            if fast:  # what `i2i translate --backend fast` (or `compiled`) runs
                forward = fast_generator(trainer.generator, mode, batch_images, precision,
                                         compile=compile, log_line=found["inference_notes"].append)
                found["inference_notes"].append(f"fast_generator {key}: {forward.choices}")
                seconds = time_per_iteration({mode: lambda: forward(batch_images)}, device=trainer.device, **timing)[mode]
                eager = fast_generator(trainer.generator, mode, batch_images, precision, log_line=lambda line: None) \
                    if compile else forward
                operators[key] = count_ops(lambda: eager(batch_images), trainer.device)
            else:
                with generator_mode(trainer.generator, mode):
                    seconds = time_per_iteration({mode: lambda: plain_forward(trainer, batch_images)},
                                                 device=trainer.device, **timing)[mode]
                    operators[key] = count_ops(lambda: plain_forward(trainer, batch_images), trainer.device)
            found["inference_images_per_s"][key] = rate_summary(seconds, batch)
    found["inference_path"] = ("fast_generator" + (" compiled" if compile else "")) if fast else "generator"
    return found, operators


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def ratios(configs: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each median rate of ``tuned`` and ``default`` over ``baseline``'s (above 1: faster), and
    ``default``'s training rate over ``tuned``'s."""
    baseline, tuned, default = configs["baseline"], configs["tuned"], configs["default"]

    def train(config: dict[str, Any]) -> float:
        return config["train_steps_per_s"]["median"]

    found = {"train_steps_per_s": train(tuned) / train(baseline),
             "default_train_steps_per_s": train(default) / train(baseline),
             "default_over_tuned_train_steps_per_s": train(default) / train(tuned)}
    for key, value in tuned["inference_images_per_s"].items():
        found[f"inference_{key}"] = value["median"] / baseline["inference_images_per_s"][key]["median"]
    return found


def bench_speed(
    recipe_path: Path,
    overrides: list[str] | None = None,
    device: str = "auto",
    steps: int = 10,
    warmup: int = 3,
    repeats: int = 3,
    infer_batch: int = 8,
    results: Path | None = RESULTS_DIR / "speed.jsonl",
    on_config: Callable[[str], None] | None = None,
    compile_inference: bool = True,
    peak_sizes: tuple[int, ...] = PEAK_SIZES,
) -> dict[str, Any]:
    """Time the machine's limits, then baseline, tuned and default on ``recipe_path`` (the limits
    again around their training repeats and after each inference); append the record to ``results``."""
    if min(steps, repeats, infer_batch) < 1 or warmup < 0:
        raise I2IError("--steps, --repeats and --infer-batch must be at least 1, --warmup at least 0")
    overrides = list(overrides or [])
    torch_device = resolve_device(device)
    recipe, real_data = bench_recipe(Path(recipe_path), overrides, torch_device)
    settings = configurations(torch_device)
    timing = {"iterations": steps, "warmup": warmup, "repeats": repeats}
    memory = PeakMemory(torch_device)
    notify = on_config or (lambda name: None)

    notify("matmul peak and memory bandwidth")
    sampler = LimitSampler(torch_device, tuple(peak_sizes), repeats)
    sampler()
    notes: list[str] = []

    def sample_limits() -> None:
        memory.outside(sampler)

    # baseline alone and first: the fast CPU settings change the allocator for the whole process
    notify("baseline")
    memory.reset()
    trainer, real_a, real_b = build(recipe, settings["baseline"], real_data)

    def baseline_step() -> Any:
        return trainer.train_step(real_a, real_b)

    gflop_per_step = counted_gflop(baseline_step)  # an untimed step of its own
    gflop_per_image = generator_gflop(trainer, real_a)
    train = time_per_iteration({"baseline": baseline_step}, device=torch_device, between=sample_limits, **timing)
    operators = {"baseline": train_operators("baseline", baseline_step, gflop_per_step, torch_device, notes)}
    found, operators_of_inference = inference(trainer, real_a, infer_batch, timing, fast=False, compile=False)
    sample_limits()
    operators["baseline"].update(operators_of_inference)
    configs = {"baseline": {**describe(trainer, settings["baseline"], train["baseline"], gflop_per_step), **found,
                            "peak_memory_mib": memory.read_mib(), "peak_memory_kind": memory.kind}}
    del trainer, real_a, real_b
    release(torch_device)

    notify("tuned and default (alternating)")
    memory.reset()
    built = {name: build(recipe, settings[name], real_data) for name in ("tuned", "default")}
    steps_of = {name: lambda t=t, a=a, b=b: t.train_step(a, b) for name, (t, a, b) in built.items()}
    gflop_of = {name: counted_gflop(step) for name, step in steps_of.items()}
    train = time_per_iteration(steps_of, device=torch_device, between=sample_limits, **timing)
    for name, (trainer, real_a, _) in built.items():
        configs[name] = describe(trainer, settings[name], train[name], gflop_of[name])
        operators[name] = train_operators(name, steps_of[name], gflop_of[name], torch_device, notes)
    configs["tuned"]["peak_memory_mib"] = memory.read_mib()
    configs["tuned"]["peak_memory_kind"] = memory.kind + " (tuned and default trainers together)"
    trainer, real_a, _ = built.pop("tuned")
    del built
    release(torch_device)
    notify("tuned inference")
    found, operators_of_inference = inference(trainer, real_a, infer_batch, timing, fast=True, compile=compile_inference)
    sample_limits()
    configs["tuned"].update(found)
    operators["tuned"].update(operators_of_inference)
    del trainer, real_a
    release(torch_device)
    limits = sampler.summary()
    peak_gflop_per_s = max(rate["median"] for rate in limits["matmul_gflop_per_s"].values())
    roofs = Limits.of(limits)
    if roofs is None:
        notes.append("no roofline bound: the memory bandwidth beyond the cache was not measured")
    for name, config in configs.items():
        add_limit_figures(config, gflop_per_image, peak_gflop_per_s)
        if roofs is not None:
            add_roofline_figures(config, operators[name], roofs)

    record = {
        **environment(torch_device),
        "kind": "speed",
        "recipe": recipe.name,
        "recipe_file": str(recipe_path),
        "overrides": overrides,
        "image_size": recipe.data.crop_size,
        "batch_size": recipe.train.batch_size,
        "infer_batch": infer_batch,
        "batches": "real" if real_data else "random",
        "steps": steps,
        "warmup": warmup,
        "repeats": repeats,
        "matmul_peak": sampler.peak,
        "limits": limits,
        "limit_notes": limits["notes"] + notes,
        "configs": configs,
        "ratio": ratios(configs),
    }
    if results is not None:
        append_record(results, record)
    return record
