"""Which engine settings a run trains with, chosen by timing real steps on this machine.

``train.engine: reference`` is the published eager fp32 step. ``fast`` (the default)
leaves every engine setting the recipe does not set (``precision``, ``channels_last``,
``fused_adam``, ``cpu_speedups``, ``cuda_graph``, ``compile``) to the engine: on the first run of a
recipe shape on a machine, ``choose_engine`` times a few steps of each candidate
against the best so far, interleaved, keeps the fastest and caches the decision in
``~/.cache/i2i/engine/`` (``I2I_CACHE`` replaces ``~/.cache/i2i``), keyed by device,
torch version, networks, sizes and threads; later runs read it and time nothing.
Without the probe (``train.engine_probe: false`` or ``I2I_ENGINE_PROBE=0``) the
static choice holds: bf16 only where the hardware computes it natively.
(Over 300 lines: one job, the probe, its budget and its cache.)
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from i2i.engine.build import cpu_has_fast_bf16
from i2i.safe_files import cache_root, write_file

ENGINE_SETTINGS = ("precision", "channels_last", "fused_adam", "cpu_speedups", "cuda_graph", "compile")
REFERENCE = {"precision": "fp32", "channels_last": False, "fused_adam": False, "cpu_speedups": False,
             "cuda_graph": False, "compile": False}
# Bumped when the candidates or the way they are timed change: older cache entries are then ignored.
PROBE_VERSION = 2
# A challenger replaces the best only when faster by more than this (timing noise on a shared machine).
MARGIN = 0.05
# The probe may spend this share of a 1,000-step run (or of the planned run, if longer).
BUDGET_SHARE, BUDGET_STEPS = 0.1, 1000
# What a compile of G and D is reckoned to cost against the budget (CUDA only: on the CPU it was slower).
COMPILE_SECONDS = 60.0

clock = time.perf_counter  # tests replace it


@dataclass
class EngineChoice:
    """The engine settings a run uses (every key of ``ENGINE_SETTINGS``), why each was
    chosen, and where the choice came from: ``reference``, ``recipe`` (all set
    explicitly), ``measured``, ``cached`` or ``static`` (probe skipped)."""

    settings: dict[str, Any]
    reasons: dict[str, str]
    source: str
    cache_file: Path | None = None
    comparisons: list[dict[str, Any]] = field(default_factory=list)

    def summary(self, indent: str = "  ") -> str:
        """Where the choice came from, then one line per setting (the run's start summary)."""
        origin = {
            "reference": "reference: the published eager fp32 step",
            "recipe": "fast, every setting from the recipe",
            "measured": "fast, measured on this machine",
            "cached": "fast, as measured before on this machine",
            "static": "fast, static choice (probe off)",
        }[self.source]
        if self.cache_file is not None:
            origin += f" ({self.cache_file})"
        settings = [f"{indent}{key} {_show(self.settings[key])}: {self.reasons[key]}" for key in ENGINE_SETTINGS]
        return "\n".join([origin, *settings])

    def one_line(self) -> str:
        """Where the choice came from and every setting, without the reasons (environment.json)."""
        return f"{self.source}: " + ", ".join(f"{key} {_show(self.settings[key])}" for key in ENGINE_SETTINGS)


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


# ------------------------------------------------------------------ the machine
def cpu_fields() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo; empty where it cannot be read."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def device_name(device: torch.device) -> str:
    """The CUDA device's name, else the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    fields = cpu_fields()
    return fields["model name"] if "model name" in fields else platform.processor() or platform.machine()


def cpu_model() -> str:
    """The CPU as a figure must name it: model name, family and model ("AMD EPYC" alone is
    a Zen 3 on one machine and a Zen 4 on the next)."""
    fields = cpu_fields()
    if not fields:
        return "unknown"
    return f"{fields.get('model name', '?')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def cache_dir() -> Path:
    return cache_root() / "engine"


def probe_allowed(configured: bool) -> bool:
    return configured and os.environ.get("I2I_ENGINE_PROBE", "1") != "0"


# --------------------------------------------------------------- the candidates
def graphable(fixed: dict[str, Any], on_nonfinite: str) -> bool:
    """Whether a CUDA step can be captured: nothing in it may wait for the host (fp16's
    GradScaler and ``on_nonfinite: skip`` read values back every step)."""
    return fixed.get("precision") != "fp16" and on_nonfinite == "stop"


def static_settings(device: torch.device, graph: bool = True) -> dict[str, Any]:
    """The choice without measuring (docs/engine.md has the measurements behind it): bf16
    where the hardware computes it natively, and with it channels_last (oneDNN's and
    cuDNN's low-precision kernels want NHWC; in fp32 on an AVX2 CPU NCHW was no slower);
    fused Adam; the CPU rewrites on the CPU; on CUDA the step as one graph (``graph``:
    where it can be captured)."""
    bf16 = native_bf16(device)
    return {
        "precision": "bf16" if bf16 else "fp32",
        "channels_last": bf16 or device.type == "cuda",
        "fused_adam": True,
        "cpu_speedups": device.type == "cpu",
        "cuda_graph": device.type == "cuda" and graph,
        "compile": False,  # a minute of compiling: only where the probe saw it repaid
    }


def probed_settings(device: torch.device, fixed: dict[str, Any], on_nonfinite: str = "stop") -> list[str]:
    """The settings worth timing both ways: on CUDA the step's graph first (without launch
    costs the other settings compare differently), the costliest (compile) last."""
    keys = ["cuda_graph"] if device.type == "cuda" and graphable(fixed, on_nonfinite) else []
    keys.append("channels_last")
    if native_bf16(device):  # bf16 without hardware support is emulated: never faster
        keys.append("precision")
    keys.append("cpu_speedups" if device.type == "cpu" else "compile")
    return [key for key in keys if key not in fixed]


def flipped(settings: dict[str, Any], key: str) -> dict[str, Any]:
    """``settings`` with ``key`` the other way (precision: bf16 <-> fp32)."""
    value = settings[key]
    if key == "precision":
        value = "fp32" if value == "bf16" else "bf16"
    else:
        value = not value
    return {**settings, key: value}


# ------------------------------------------------------------------- the cache
def shape_key(recipe: Any, device: torch.device, channels: tuple[int, int], fixed: dict[str, Any]) -> dict[str, Any]:
    """What the fastest settings depend on: the machine, torch, the networks and losses, the
    sizes, the thread count and the settings the recipe fixes."""
    return {
        "probe_version": PROBE_VERSION,
        "device": device.type,
        "device_name": device_name(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability() if device.type == "cpu" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "method": recipe.method.model_dump(mode="json"),
        "model": recipe.model.model_dump(mode="json", exclude_none=True),
        "losses": [spec.model_dump(mode="json") for spec in recipe.losses],
        "crop_size": recipe.data.crop_size,
        "batch_size": recipe.train.batch_size,
        "channels": list(channels),
        "fixed": fixed,
        "compile_mode": recipe.train.compile_mode,  # what the compile candidate means
    }


def cache_file(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"{digest}.json"


class Settings(BaseModel):
    """One value per engine setting, as a cache file must hold them."""

    model_config = ConfigDict(extra="forbid")
    precision: Literal["fp32", "bf16", "fp16"]
    channels_last: StrictBool
    fused_adam: StrictBool
    cpu_speedups: StrictBool
    cuda_graph: StrictBool
    compile: StrictBool


class Comparison(BaseModel):
    """One timed (or failed) challenger, as ``probe`` records it."""

    best: Settings
    option: Settings
    speedup: float = Field(ge=0)
    failed: str | None = None
    steps_per_round: int | None = None
    best_seconds: list[float] = Field(default_factory=list)
    option_seconds: list[float] = Field(default_factory=list)
    startup_seconds: float = 0.0
    best_startup_seconds: float = 0.0


class CacheEntry(BaseModel):
    """A cache file: what the probe decided for ``key`` and why."""

    key: dict[str, Any]
    settings: Settings
    reasons: dict[str, str]
    comparisons: list[Comparison]
    complete: StrictBool
    planned_steps: int = Field(ge=0)


def read_cached(path: Path, key: dict[str, Any], planned_steps: int, note: Callable[[str], None]) -> dict[str, Any] | None:
    """The cached decision for ``key``, unless it is missing, for another key, or cut short by
    a budget that this run, being longer, would exceed. The cache is only an optimisation: a
    file that cannot be read or is not an entry is passed over with a ``note`` (and replaced)."""
    try:
        entry = CacheEntry.model_validate_json(path.read_bytes()).model_dump(exclude_none=True)
    except FileNotFoundError:
        return None
    except OSError as error:
        note(f"ignoring the engine cache at {path}: {error.strerror or error}; probing again")
        return None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the file"
        note(f"ignoring the engine cache at {path}: {where}: {first['msg']}; probing again")
        return None
    if entry["key"] != key or not entry["complete"] and planned_steps > entry["planned_steps"]:
        return None
    return entry


def write_cached(path: Path, entry: dict[str, Any], note: Callable[[str], None]) -> None:
    """Written to a new temporary name, then renamed (``i2i.safe_files``): a reader never sees half
    a file. A cache that cannot be written (read-only, a file where its folder should be) costs a ``note``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, json.dumps(entry, indent=1, sort_keys=True))
    except OSError as error:
        note(f"cannot write the engine cache at {path}: {error.strerror or error}; this run's choice is not kept")


# ------------------------------------------------------------------- the probe
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_step(step: Callable[[], Any], steps: int, device: torch.device) -> float:
    synchronize(device)
    start = clock()
    for _ in range(steps):
        step()
    synchronize(device)
    return (clock() - start) / steps


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> str:
    return ", ".join(f"{key} {_show(new[key])}" for key in ENGINE_SETTINGS if old[key] != new[key])


def probe(
    first: dict[str, Any],
    keys: list[str],
    make_step: Callable[[dict[str, Any]], Callable[[], Any]],
    device: torch.device,
    planned_steps: int,
    log_line: Callable[[str], None],
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """Starting from ``first``, time the best so far against it with each of ``keys`` the
    other way, in alternating rounds; returns (best, comparisons, whether every key was
    timed within the budget). Other work on the machine only ever adds time: the speedup
    is the smaller of the fastest rounds' ratio and the median round's. Two trainers are
    alive at a time."""
    warmup, rounds, round_seconds = (5, 5, 0.1) if device.type == "cuda" else (2, 5, 0.3)
    started = clock()
    best = first
    best_step = make_step(best)
    for _ in range(warmup):
        best_step()
    build = clock() - started
    step_seconds = seconds_per_step(best_step, 1, device)
    steps = max(1, math.ceil(round_seconds / step_seconds))
    budget = BUDGET_SHARE * (build + max(BUDGET_STEPS, planned_steps) * step_seconds)
    comparisons: list[dict[str, Any]] = []
    for key in keys:
        option = flipped(best, key)
        compile_cost = COMPILE_SECONDS if option["compile"] and not best["compile"] else 0.0
        cost = build + compile_cost + (warmup + 2 * rounds * steps) * step_seconds
        if clock() - started + cost > budget:
            log_line(f"engine probe: {describe_change(best, option)} not timed (over the probe's budget of {budget:.0f} s)")
            return best, comparisons, False
        built = clock()
        try:
            step = make_step(option)
            for _ in range(warmup):
                step()
            startup = clock() - built  # with compile: the compilation
            pairs = [(seconds_per_step(best_step, steps, device), seconds_per_step(step, steps, device))
                     for _ in range(rounds)]
        except Exception as error:  # a candidate that cannot train here is not a candidate
            detail = (str(error).strip().splitlines() or [""])[0][:200]
            log_line(f"engine probe: {describe_change(best, option)} failed ({type(error).__name__}: {detail}); not used")
            comparisons.append({"best": best, "option": option, "speedup": 0.0, "failed": f"{type(error).__name__}: {detail}"})
            continue
        best_seconds, option_seconds = [old for old, _ in pairs], [new for _, new in pairs]
        # Both the fastest rounds and the typical round must agree: a neighbour's burst can fake either alone.
        speedup = min(min(best_seconds) / min(option_seconds), statistics.median(old / new for old, new in pairs))
        comparisons.append({"best": best, "option": option, "speedup": speedup, "steps_per_round": steps,
                            "best_seconds": best_seconds, "option_seconds": option_seconds,
                            "startup_seconds": startup, "best_startup_seconds": build})
        log_line(f"engine probe: {describe_change(best, option)} runs {speedup:.2f}x the speed of {describe_change(option, best)}")
        if speedup > 1 + MARGIN:
            best, best_step = option, step
            step_seconds = min(option_seconds)
        del step
        gc.collect()  # the losing trainer's memory, before the next is built
    return best, comparisons, True


def reasons_for(
    settings: dict[str, Any], fixed: dict[str, Any], comparisons: list[dict[str, Any]], device: torch.device
) -> dict[str, str]:
    """One reason per setting: set by the recipe, measured (the comparison that decided
    it, as the chosen value's speed over the other's), or the static rule."""
    where = "on this GPU" if device.type == "cuda" else "on this CPU"
    reasons = {key: "set in the recipe" for key in fixed}
    for comparison in comparisons:
        best, option, speedup = comparison["best"], comparison["option"], comparison["speedup"]
        (key,) = [key for key in ENGINE_SETTINGS if best[key] != option[key]]
        if "failed" in comparison:
            reasons[key] = f"{key} {_show(option[key])} failed {where} ({comparison['failed']})"
            continue
        chosen_won = settings[key] == option[key]
        other = best[key] if chosen_won else option[key]
        ratio = speedup if chosen_won else 1 / speedup
        noise = "" if chosen_won or speedup < 1 else f" (within the {MARGIN:.0%} margin kept for noise)"
        reasons[key] = f"measured {ratio:.2f}x the speed of {key} {_show(other)} {where}{noise}"
    bf16 = native_bf16(device)
    static = {
        "precision": "the hardware computes bf16 natively (not measured)" if bf16
        else f"no native bf16 {where} (emulated, it is slower)",
        "channels_last": "NHWC with bf16 or on CUDA, else NCHW (not measured)",
        "fused_adam": "one fused kernel per Adam update, the same math",
        "cpu_speedups": "CPU rewrites of the same math (not measured)" if device.type == "cpu" else "CPU only",
        "cuda_graph": "one launch a step instead of hundreds (not measured; off with fp16 or on_nonfinite skip)"
        if device.type == "cuda" else "CUDA only",
        "compile": "not timed: over the probe's budget for this run" if device.type == "cuda"
        else "not tried on the CPU: slower than eager where measured (docs/engine.md)",
    }
    return {key: reasons.get(key, static[key]) for key in ENGINE_SETTINGS}


def paid_off(settings: dict[str, Any], comparisons: list[dict[str, Any]], planned_steps: int) -> tuple[dict[str, Any], str | None]:
    """``settings``, or its eager form where the measured compile time is more than compiling
    saves over ``planned_steps`` steps (with the reason)."""
    timed = [c for c in comparisons if c["option"]["compile"] and not c["best"]["compile"] and c.get("best_seconds")
             and c.get("option_seconds")]
    if not settings["compile"] or len(timed) != 1:
        return settings, None
    (comparison,) = timed
    saved = min(comparison["best_seconds"]) - min(comparison["option_seconds"])
    compiling = comparison["startup_seconds"] - comparison["best_startup_seconds"]
    if planned_steps * saved >= compiling:
        return settings, None
    return comparison["best"], (f"compiled steps measured {comparison['speedup']:.2f}x as fast, but compiling "
                                f"({compiling:.0f} s) costs more than they save over {planned_steps} steps")


def choose_engine(
    recipe: Any,
    device: torch.device,
    channels: tuple[int, int],
    make_step: Callable[[dict[str, Any]], Callable[[], Any]],
    planned_steps: int,
    log_line: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> EngineChoice:
    """The engine settings ``recipe`` trains with on ``device``; ``channels`` are the data's
    (in, out); ``make_step(settings)`` builds a throwaway trainer with every engine setting
    given and returns one training step on a fixed batch. ``log_line`` hears the probe's
    timings, ``warn`` (default: ``log_line``) a cache that cannot be read or written."""
    warn = warn or log_line
    train = recipe.train
    fixed = {name: getattr(train, name) for name in ENGINE_SETTINGS if getattr(train, name) is not None}
    if train.engine == "reference":
        reasons = {name: "set in the recipe" if name in fixed else "reference engine: the published eager fp32 step"
                   for name in ENGINE_SETTINGS}
        return EngineChoice({**REFERENCE, **fixed}, reasons, "reference")
    first = {**static_settings(device, graphable(fixed, train.on_nonfinite)), **fixed}
    keys = probed_settings(device, fixed, train.on_nonfinite)
    if not keys or not probe_allowed(train.engine_probe):
        return EngineChoice(first, reasons_for(first, fixed, [], device), "recipe" if not keys else "static")
    key = shape_key(recipe, device, channels, fixed)
    path = cache_file(key)
    entry = read_cached(path, key, planned_steps, warn)
    source = "cached"
    if entry is None:
        cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):  # the run's own random stream does not see the probe
            best, comparisons, complete = probe(first, keys, make_step, device, planned_steps, log_line)
        entry = {"key": key, "settings": best, "reasons": reasons_for(best, fixed, comparisons, device),
                 "comparisons": comparisons, "complete": complete, "planned_steps": planned_steps}
        write_cached(path, entry, warn)
        source = "measured"
    # The cache decides only what is probed here: what the recipe sets, and what this device
    # cannot use, stay as the recipe and the static rule say, whatever a cache file holds.
    decided = {**first, **{name: entry["settings"][name] for name in keys}}
    static_reasons = reasons_for(first, fixed, [], device)
    settings, short_run = paid_off(decided, entry["comparisons"], planned_steps)
    reasons = {name: entry["reasons"].get(name, static_reasons[name]) if name in keys else static_reasons[name]
               for name in ENGINE_SETTINGS}
    if short_run:
        reasons["compile"] = short_run
    return EngineChoice(settings, reasons, source, path, entry["comparisons"])
