"""``i2i bench speed``: training and inference throughput, baseline against tuned.

Both configurations run in one process on the same recipe: ``baseline`` is the
reference's way (eager fp32, contiguous tensors) and ``tuned`` adds the engine's
``tuned_settings(device)``. Training is timed through ``Trainer.train_step`` on
one fixed batch of the recipe's crop size (a real one when the data folder is
there, random tensors otherwise), so data loading is not part of the figure.
Inference is timed on the plain generator for ``baseline`` and through the
engine's inference path (``fast_generator``, compiled with freezing unless
``--no-compile-inference``) for ``tuned``.
Each figure is timed ``repeats`` times after ``warmup`` untimed iterations, with
the device synchronized before every clock read; the median and the range are kept.
"""

from __future__ import annotations

import gc
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from i2i.bench import RESULTS_DIR
from i2i.bench.records import append_record, environment
from i2i.engine.build import build_dataset, resolve_device, tuned_settings
from i2i.engine.fast_inference import fast_generator
from i2i.engine.inference import generator_mode
from i2i.engine.setup import training_batches
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, TrainSection
from i2i.errors import I2IError

BASELINE = {"precision": "fp32", "channels_last": False, "compile": False}
INFERENCE_MODES = ("eval", "train")


def configurations(device: torch.device) -> dict[str, dict[str, Any]]:
    """Every setting the tuned configuration changes is pinned in the baseline too: to the
    reference's value, or else to the recipe schema's default, whatever the recipe says."""
    tuned = tuned_settings(device)
    defaults = {key: TrainSection.model_fields[key].default for key in tuned if key in TrainSection.model_fields}
    baseline = {**defaults, **BASELINE}
    return {"baseline": baseline, "tuned": {**baseline, **tuned}}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_per_iteration(
    run: Callable[[], Any], iterations: int, warmup: int, repeats: int, device: torch.device
) -> list[float]:
    """Seconds per call of ``run``, one figure per repeat of ``iterations`` calls."""
    for _ in range(warmup):
        run()
    _synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            run()
        _synchronize(device)
        times.append((time.perf_counter() - start) / iterations)
    return times


def rate_summary(seconds: list[float], items_per_call: int = 1) -> dict[str, Any]:
    """Items per second: median over repeats, the range, and the range relative to the median."""
    rates = sorted(items_per_call / s for s in seconds)
    median = statistics.median(rates)
    return {"median": median, "min": rates[0], "max": rates[-1], "spread": (rates[-1] - rates[0]) / median, "runs": rates}


class PeakMemory:
    """CUDA: peak allocated bytes. CPU: the process's peak resident set (VmHWM), reset at
    the start where the kernel allows it (else the peak since the process began)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_peak_allocated" if device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass

    def read_mib(self) -> float | None:
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
        item = next(iter(training_batches(trainer.recipe, trainer.dataset, trainer.sampler, trainer.device, 0)))
        real_a, real_b = item["input"], item["target"]
    else:
        generator = torch.Generator().manual_seed(trainer.cfg.seed)
        real_a = torch.rand(batch, trainer.in_channels, size, size, generator=generator) * 2 - 1
        real_b = torch.rand(batch, trainer.out_channels, size, size, generator=generator) * 2 - 1
    return tuple(t.to(trainer.device).contiguous(memory_format=trainer.memory_format) for t in (real_a, real_b))


def plain_forward(trainer: Trainer, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), trainer.autocast():
        return trainer.G(images)


def measure(
    recipe: Recipe,
    settings: dict[str, Any],
    real_data: bool,
    steps: int,
    warmup: int,
    repeats: int,
    infer_batch: int,
    fast_inference: bool = False,
    compile_inference: bool = False,
) -> dict[str, Any]:
    """Every figure of one configuration."""
    configured = recipe.model_dump(mode="json")
    configured["train"].update(settings)
    configured = Recipe.from_dict(configured, recipe.name)
    # The trainer never writes here: only train_step and the generator are used.
    trainer = Trainer(configured, run_dir=Path(tempfile.gettempdir()) / "i2i-bench-speed")
    device = trainer.device
    memory = PeakMemory(device)
    memory.reset()
    real_a, real_b = first_batch(trainer, real_data)
    trainer.generator.train()
    trainer.discriminator.train()
    train = time_per_iteration(lambda: trainer.train_step(real_a, real_b), steps, warmup, repeats, device)
    result = {
        "settings": settings,
        "autocast": str(trainer.amp_dtype).removeprefix("torch."),
        "train_steps_per_s": rate_summary(train),
        "train_images_per_s": rate_summary(train, trainer.cfg.batch_size),
        "inference_images_per_s": {},
        "inference_notes": [],  # e.g. a compile that fell back to eager: the figure is then eager's
    }
    for mode in INFERENCE_MODES:
        for batch in sorted({1, infer_batch}):
            images = real_a[:1].expand(batch, -1, -1, -1).contiguous(memory_format=trainer.memory_format)
            if fast_inference:
                # The engine's inference path (what `i2i translate --backend fast` runs).
                forward = fast_generator(trainer.generator, mode, images, configured.train.precision,
                                         compile=compile_inference, log_line=result["inference_notes"].append)
                seconds = time_per_iteration(lambda: forward(images), steps, warmup, repeats, device)
            else:
                with generator_mode(trainer.generator, mode):
                    seconds = time_per_iteration(lambda: plain_forward(trainer, images), steps, warmup, repeats, device)
            result["inference_images_per_s"][f"{mode}_batch{batch}"] = rate_summary(seconds, batch)
    result["inference_path"] = ("fast_generator" + (" compiled" if compile_inference else "")) if fast_inference else "generator"
    result["peak_memory_mib"] = memory.read_mib()
    result["peak_memory_kind"] = memory.kind
    del trainer, real_a, real_b
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def ratios(baseline: dict[str, Any], tuned: dict[str, Any]) -> dict[str, float]:
    """tuned / baseline of every median rate (above 1: tuned is faster)."""
    found = {"train_steps_per_s": tuned["train_steps_per_s"]["median"] / baseline["train_steps_per_s"]["median"]}
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
) -> dict[str, Any]:
    """Time baseline and tuned on ``recipe_path``; append the record to ``results``."""
    if min(steps, repeats, infer_batch) < 1 or warmup < 0:
        raise I2IError("--steps, --repeats and --infer-batch must be at least 1, --warmup at least 0")
    overrides = list(overrides or [])
    torch_device = resolve_device(device)
    recipe, real_data = bench_recipe(Path(recipe_path), overrides, torch_device)
    configs = {}
    for name, settings in configurations(torch_device).items():
        if on_config:
            on_config(name)
        tuned = name == "tuned"
        configs[name] = measure(recipe, settings, real_data, steps, warmup, repeats, infer_batch,
                                fast_inference=tuned, compile_inference=tuned and compile_inference)
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
        "configs": configs,
        "ratio": ratios(configs["baseline"], configs["tuned"]),
    }
    if results is not None:
        append_record(results, record)
    return record

