"""``i2i bench speed | quality | compare``."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from i2i.bench import PEAK_SIZES, RESULTS_DIR
from i2i.modes import MODES_HELP

app = typer.Typer(help="Measure speed and quality; results are appended to benchmarks/results/*.jsonl.",
                  no_args_is_help=True)
console = Console()


def _rate(summary: dict[str, Any]) -> str:
    return f"{summary['median']:.3g} ({summary['min']:.3g}-{summary['max']:.3g})"


def _achieved(gflop_per_s: float, fraction: float, of_bound: float | None) -> str:
    bound = "" if of_bound is None else f", {of_bound:.0%} of bound"
    return f"{gflop_per_s:.4g} ({fraction:.0%} of peak{bound})"


def _percent(value: float | None) -> str:
    return "" if value is None else f"{value:.0%}"


def speed_table(record: dict[str, Any]) -> Table:
    baseline, tuned, default = (record["configs"][name] for name in ("baseline", "tuned", "default"))
    ratio = record["ratio"]
    table = Table(
        "figure", "baseline", "tuned", "default", "tuned/baseline", "default/baseline",
        title=f"{record['recipe']} at {record['image_size']}x{record['image_size']}, batch {record['batch_size']}, "
              f"{record['device_name']} ({record['batches']} batches; median (min-max) of {record['repeats']} repeats)",
    )
    table.add_row("train steps/s", *(_rate(c["train_steps_per_s"]) for c in (baseline, tuned, default)),
                  f"{ratio['train_steps_per_s']:.2f}", f"{ratio['default_train_steps_per_s']:.2f}")
    table.add_row("train GFLOP/s (of peak, of bound)",
                  *(_achieved(c["train_gflop_per_s"], c["train_fraction_of_peak"], c.get("train_fraction_of_bound"))
                    for c in (baseline, tuned, default)), "", "")
    table.add_row("train: time outside convolutions and matmuls",
                  *(_percent(c.get("train_roofline", {}).get("outside_matmul_share")) for c in (baseline, tuned, default)),
                  "", "")
    for key in baseline["inference_images_per_s"]:
        table.add_row(f"inference {key.replace('_', ' ')} images/s", _rate(baseline["inference_images_per_s"][key]),
                      _rate(tuned["inference_images_per_s"][key]), "", f"{ratio[f'inference_{key}']:.2f}", "")
        table.add_row(f"inference {key.replace('_', ' ')} GFLOP/s (of peak, of bound)",
                      *(_achieved(c["inference_gflop_per_s"][key], c["inference_fraction_of_peak"][key],
                                  c.get("inference_fraction_of_bound", {}).get(key)) for c in (baseline, tuned)),
                      "", "", "")
    memory = [c["peak_memory_mib"] for c in (baseline, tuned)]
    table.add_row("peak memory MiB", *(f"{m:.0f}" if m is not None else "n/a" for m in memory), "", "", "")
    return table


def describe_limit(record: dict[str, Any]) -> str:
    peak, limits = record["matmul_peak"], record["limits"]
    rates = ", ".join(f"{key.replace('_', ' ')}: {_rate(rate)}" for key, rate in peak["gflop_per_s"].items())
    sampled = "; ".join(f"matmul {name} at {rate['size']}: {_rate(rate)} GFLOP/s (spread {rate['spread']:.0%})"
                        for name, rate in limits["matmul_gflop_per_s"].items())
    bandwidth = "; ".join(f"triad {'beyond' if kind == 'dram' else 'within'} the {limits['last_level_cache_mib']:.0f} MiB "
                          f"last-level cache (3 x {rate['buffer_mib']:.0f} MiB): {_rate(rate)} GB/s (spread {rate['spread']:.0%})"
                          for kind, rate in limits["bandwidth_gb_per_s"].items())
    baseline = record["configs"]["baseline"]
    lines = [f"matmul peak at the start {peak['best_gflop_per_s']:.4g} GFLOP/s ({peak['best'].replace('_', ' ')}, "
             f"{peak['threads']} threads; GFLOP/s per dtype and size {rates})",
             f"limits sampled {limits['samples']} times, before, between and after the timed repeats (median (min-max); "
             f"the roofline bound takes each one's best): "
             f"{sampled}; {bandwidth or 'no bandwidth'}",
             f"work: training step {baseline['train_gflop_per_step']:.4g} GFLOP, "
             f"generator forward {baseline['inference_gflop_per_image']:.4g} GFLOP per image"]
    return "\n".join(lines + record["limit_notes"])


def describe_roofline(record: dict[str, Any]) -> str:
    """Per configuration: the step's bound and what it is made of, where the time goes, and the
    operators furthest from their roof."""
    lines = []
    for name, config in record["configs"].items():
        roof = config.get("train_roofline")
        if roof is None:
            continue
        shares = ", ".join(f"{group} {share:.0%}" for group, share in roof["shares"].items())
        lines.append(f"{name} training step: bound {roof['bound_s']:.3g} s ({roof['bound_compute_s']:.3g} s "
                     f"compute-bound operators + {roof['bound_memory_s']:.3g} s memory-bound; {roof['gflop']:.4g} GFLOP, "
                     f"{roof['gb_moved']:.3g} GB moved by {roof['operators']} operators; {roof['bound_dram_only_s']:.3g} s "
                     f"with every byte beyond the cache), step {roof['seconds']:.3g} s = {roof['fraction_of_bound']:.0%} "
                     f"of bound; time under the counter by group: {shares}")
        lines.append("  furthest from their roof (seconds above it):")
        lines.extend(f"  {op['op']} {op['dtype']} ({op['inputs']}) x{op['calls']}, {op['group']}: "
                     f"{op['seconds'] * 1e3:.1f} ms, roof {op['roof_s'] * 1e3:.1f} ms ({op['limited_by']}; "
                     f"{op['gflop']:.3g} GFLOP, {op['mb_moved']:.3g} MB) = {_percent(op['fraction_of_roof'])}"
                     for op in roof["furthest"])
    return "\n".join(lines)


def describe_settings(record: dict[str, Any]) -> str:
    lines = []
    for name, config in record["configs"].items():
        settings = " ".join(f"{key}={value}" for key, value in config["engine"].items())
        path = f"; inference through {config['inference_path']}" if "inference_path" in config else ""
        lines.append(f"{name}: {settings} ({config['engine_source']}; autocast {config['autocast']}{path})")
        lines.extend(f"  {note}" for note in dict.fromkeys(config.get("inference_notes", [])))
    memory = record["configs"]["tuned"]["peak_memory_kind"]
    return "\n".join(lines) + f"\npeak memory: {memory.replace('_', ' ')}"


@app.command()
def speed(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N"),
    steps: int = typer.Option(10, "--steps", help="timed iterations per repeat"),
    warmup: int = typer.Option(3, "--warmup", help="untimed iterations before timing"),
    repeats: int = typer.Option(3, "--repeats", help="timed repeats; the median is reported"),
    infer_batch: int = typer.Option(8, "--infer-batch", help="the larger inference batch (batch 1 is always timed)"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe value: --set data.crop_size=128"),
    results: Path = typer.Option(RESULTS_DIR / "speed.jsonl", "--results", help="JSON lines file to append to"),
    compile_inference: bool = typer.Option(True, "--compile-inference/--no-compile-inference", help="tuned inference through the compiled, frozen generator (`translate --backend compiled`; a minute or two of compiling) or its eager form (`--backend fast`)"),
    peak_sizes: list[int] = typer.Option(list(PEAK_SIZES), "--peak-size", help="square matmul sizes timed for the peak (repeat the option); the best median counts"),
) -> None:
    """Training and inference throughput: baseline (the reference engine), tuned (the fast engine's static
    choice) and default (what `i2i run` chooses here, probe included)."""
    from i2i.bench.speed import bench_speed

    record = bench_speed(recipe, overrides, device, steps, warmup, repeats, infer_batch, results,
                         on_config=lambda name: console.print(f"timing {name} ...", highlight=False),
                         compile_inference=compile_inference, peak_sizes=tuple(peak_sizes))
    console.print(speed_table(record))
    console.print(describe_limit(record), highlight=False, soft_wrap=True)
    console.print(describe_roofline(record), highlight=False, soft_wrap=True)
    console.print(describe_settings(record), highlight=False, soft_wrap=True)
    console.print(f"appended to {results}", highlight=False)


@app.command()
def quality(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="run directory, checkpoint folder or generator .safetensors"),
    data: Path = typer.Option(..., "--data", help="data root holding the split (e.g. val/)"),
    limit: Optional[int] = typer.Option(None, "--limit", min=2, help="only the first N images (default: all)"),
    mode: str = typer.Option("all", "--mode", help="a mode or all; " + MODES_HELP),
    split: str = typer.Option("val", "--split", help="the split to score; never the one trained on"),
    device: str = typer.Option("auto", "--device"),
    results: Path = typer.Option(RESULTS_DIR / "quality.jsonl", "--results", help="JSON lines file to append to"),
    progress_every: int = typer.Option(25, "--progress-every", min=1,
                                       help="images between progress lines when stdout is not a terminal"),
    direction: str = typer.Option("AtoB", "--direction", help="AtoB: the run's translation (recipe input -> target); "
                                  "BtoA: its other generator (cyclegan), the targets translated and compared with the inputs"),
    per_image: bool = typer.Option(True, "--per-image/--no-per-image", help="also write each image's features and "
                                   "scores beside the results file (quality_images/, for compare's bootstrap)"),
) -> None:
    """FID, KID, SSIM and PSNR of a trained generator on a split, on the pinned protocol (one record per mode).
    A set without pairs (unaligned: testA, testB) gets FID and KID only; SSIM and PSNR need the true pair."""
    from i2i.bench.quality import MODES, bench_quality_modes

    if mode not in (*MODES, "all"):
        raise typer.BadParameter(f"must be {', '.join(MODES)} or all, got {mode!r}", param_hint="--mode")
    modes = MODES if mode == "all" else (mode,)
    with quality_progress(progress_every) as on_image:
        records = bench_quality_modes(checkpoint, data, limit, modes, device, split, results, on_image=on_image,
                                      direction=direction, per_image=per_image)
    first = records[0]
    against = f" against {first['metrics']['real_images']} real ones (no pairs)" if "real_images" in first["metrics"] else ""
    console.print(f"{first['recipe']} {first['direction']} step {first['steps_trained']} ({first['weights']}): "
                  f"{first['metrics']['images']} {split} images{against}", highlight=False)
    table = Table("metric", *(f"{record['mode']} mode" for record in records))
    for key in first["unpaired_metrics"] + first["paired_metrics"]:
        table.add_row(key.upper(), *(f"{record['metrics'][key]:.4g}" for record in records))
    for key, value in first.get("bicubic_baseline", {}).items():
        if key in ("ssim", "psnr"):
            table.add_row(f"{key.upper()} of the bicubic input", *(f"{value:.4g}" for _ in records))
    console.print(table)
    console.print(f"appended to {results}", highlight=False)


@contextlib.contextmanager
def quality_progress(every: int) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar in a terminal; elsewhere (a log, CI) a plain line every ``every`` images."""
    if not console.is_terminal:
        started = time.perf_counter()

        def line(mode: str, done: int, count: int) -> None:
            if done % every == 0 or done == count:
                print(f"{mode} mode: {done}/{count} images scored, {time.perf_counter() - started:.0f} s", flush=True)

        yield line
        return
    from rich.progress import MofNCompleteColumn, Progress, TimeElapsedColumn

    with Progress(*Progress.get_default_columns()[:2], MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        tasks: dict[str, Any] = {}

        def update(mode: str, done: int, count: int) -> None:
            if mode not in tasks:
                tasks[mode] = progress.add_task(f"{mode} mode: translating and scoring", total=count)
            progress.update(tasks[mode], completed=done)

        yield update


@app.command()
def compare(
    threshold: float = typer.Option(0.1, "--threshold", help="relative worsening that counts as a regression"),
    results: Path = typer.Option(RESULTS_DIR, "--results", help="folder with speed.jsonl and quality.jsonl"),
    side_a: list[str] = typer.Option([], "--a", help="side A: the quality records matching FIELD=PATTERN (repeat the "
                                     "option; e.g. --a recipe=pix2pix_maps --a mode=instance), newest per training seed"),
    side_b: list[str] = typer.Option([], "--b", help="side B, judged against side A (same filters)"),
    bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="resamples of the bootstrap over images, where the "
                                  "records have per-image values (0: no bootstrap)"),
) -> None:
    """Flag figures that got worse than the previous result of the same setup; exit 1 if any did.
    Quality figures are also judged against their noise (better / worse / within noise); with --a
    and --b, two sides are compared instead (docs/bench.md)."""
    from i2i.bench.compare import compare_results, compare_sides

    if side_a or side_b:
        if not (side_a and side_b):
            raise typer.BadParameter("give both sides, --a and --b", param_hint="--a/--b")
        print_sides(compare_sides(results, side_a, side_b, bootstrap))
        return
    changes = compare_results(results, bootstrap)
    if not changes:
        console.print(f"nothing to compare: no setup in {results} has two results yet")
        return
    table = Table("setup", "figure", "previous", "latest", "change")
    table.add_column("", no_wrap=True)  # the flag: never folded away on a narrow terminal
    table.add_column("against noise")
    flagged = []
    for change in changes:
        regressed = change.is_regression(threshold)
        if regressed:
            flagged.append(f"{change.flag} {change.setup} {change.figure} {change.relative:+.1%}")
        noise = f"{change.verdict}: {change.noise.noise}" if change.noise else ""
        table.add_row(change.setup, change.figure, f"{change.previous:.4g}", f"{change.latest:.4g}",
                      f"{change.relative:+.1%}", f"[red]{change.flag}[/red]" if regressed else "ok", noise)
    console.print(table)
    if flagged:
        console.print(f"[red]{len(flagged)} figure(s) flagged: worse than before, or default and tuned apart, "
                      f"by more than {threshold:.0%}:[/red]", soft_wrap=True)
        for line in flagged:
            console.print(f"  {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _seeds(values: list[float]) -> str:
    mean = sum(values) / len(values)
    spread = f", spread {max(values) - min(values):.4g}" if len(values) > 1 else ""
    return f"{mean:.4g} ({len(values)} seed{'s' if len(values) > 1 else ''}{spread})"


def print_sides(comparison) -> None:
    """B against A, a row per metric: each side's mean over seeds, the difference, each check, the verdict."""
    for name, records in (("A", comparison.a), ("B", comparison.b)):
        runs = ", ".join(f"seed {r.get('seed', 0)} step {r.get('steps_trained')}" for r in records)
        console.print(f"{name}: {records[0].get('recipe')}, {records[0].get('mode')} mode ({runs})", highlight=False)
    table = Table("metric", "A", "B", "B - A", "seeds", "images", "verdict (B against A)")
    for figure in comparison.figures:
        checks = {check.name: f"{'beyond' if check.beyond else 'within'} {check.noise}" for check in figure.checks}
        difference = sum(figure.b) / len(figure.b) - sum(figure.a) / len(figure.a)
        table.add_row(figure.metric.upper(), _seeds(figure.a), _seeds(figure.b), f"{difference:+.4g}",
                      checks.get("seeds", ""), checks.get("images", ""), figure.verdict)
    console.print(table)
    for note in comparison.notes:
        console.print(note, highlight=False)
