"""``report.html``: one page per run directory to judge a run by eye.

It shows the recipe, the environment, the sample grids over time (input |
generated | target for the fixed val images), the loss and metric curves as PNG
plots and the latest values. Everything it references lies in the run directory
under relative paths, so the page opens from the file system and survives a copy.

During ``i2i run`` the :class:`ReportCallback` rebuilds it at every sample grid
and at the end; ``i2i report RUN`` rebuilds it from the files alone.
"""

from __future__ import annotations

import html
import json
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import yaml

from i2i.version import __version__
from i2i.bench.records import NOT_JSON, json_lines
from i2i.engine.callbacks import Callback
from i2i.engine.run_log import BOOKKEEPING, is_loss
from i2i.engine.trainer import Trainer
from i2i.errors import I2IError
from i2i.safe_files import describe_write_failure, failed_to_write, own_folder, replacing, write_file

REPORT = "report.html"
ENVIRONMENT = "environment.json"
PLOTS = "plots"
# Grids shown besides the latest one: spread evenly over the run, so the page stays light.
HISTORY = 11
SKIPPED_SHOWN = 10  # damaged records named on the page; the rest are counted


class ReportError(I2IError):
    pass


def read_log(run_dir: Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The records of ``log.jsonl``: JSON objects with a ``step`` that is a count. Any other line
    (bad JSON, a number, a list, a step that is text or null) is passed over and described in
    ``skipped``; a half-written last line (a run appending to it) is passed over without a word."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    records = []
    for number, record in json_lines(lines):
        if record is NOT_JSON:
            if number < len(lines) and skipped is not None:
                skipped.append(f"{path}:{number}: not a JSON record")
            continue
        problem = record_problem(record)
        if problem:
            if skipped is not None:
                skipped.append(f"{path}:{number}: {problem}")
            continue
        records.append(record)
    return records


def record_problem(record: Any) -> str | None:
    """Why ``record`` is no log record, or None."""
    if not isinstance(record, dict):
        return f"a {type(record).__name__}, not a record"
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step < 2**63:
        return f"its step is {str(step)[:40]!r}, not a count"
    return None


def series(records: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Every logged number other than bookkeeping, as (step, value) pairs in log order."""
    found: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key not in BOOKKEEPING and _is_number(value):
                found.setdefault(key, []).append((record["step"], float(value)))
    return found


def _is_number(value: Any) -> bool:
    """A JSON number a plot can take: not a bool, and an int no larger than a float holds."""
    return isinstance(value, float) or isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**1023


def plot(curves: dict[str, list[tuple[int, float]]], path: Path, title: str) -> Path:
    """One small panel per curve: losses and metrics live on very different scales."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    columns = min(2, len(curves))
    rows = -(-len(curves) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 2.6 * rows), squeeze=False)
    for ax, (name, points) in zip(axes.flat, curves.items()):
        steps, values = zip(*points)
        ax.plot(steps, values, marker="o" if len(points) < 20 else None, markersize=3)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(curves) :]:
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with replacing(path) as handle:
            figure.savefig(handle, format="png", dpi=90)
    finally:
        plt.close(figure)
    return path


def environment(trainer: Trainer) -> dict[str, str]:
    import torch

    def parameters(module: torch.nn.Module) -> str:
        return f"{sum(p.numel() for p in module.parameters()):,}"

    recipe = trainer.recipe
    return {
        "device": str(trainer.device),
        "precision": str(trainer.amp_dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "i2i": __version__,
        "python": platform.python_version(),
        "host": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "generator": f"{recipe.model.generator.name} ({parameters(trainer.generator)} parameters)",
        "discriminator": f"{recipe.model.discriminator.name} ({parameters(trainer.discriminator)} parameters)",
        "training samples": str(len(trainer.dataset)) + ("" if trainer.dataset.pairs else " (unpaired)"),
        "planned steps": str(trainer.total_steps),
        # The settings the engine probe chose: printed at the start, which --quiet leaves out.
        "engine": trainer.engine.one_line(),
    }


def sample_grids(run_dir: Path, history: int = HISTORY) -> list[tuple[int, str]]:
    """(step, relative path) of the newest sample grid and up to ``history`` earlier
    ones spread evenly over the run, newest first."""
    grids = []
    for path in (run_dir / "samples").glob("step_*.png"):
        step = path.stem.removeprefix("step_")
        if step.isdigit():
            grids.append((int(step), path.relative_to(run_dir).as_posix()))
    grids.sort(reverse=True)
    if len(grids) <= history + 1:
        return grids
    earlier = grids[1:]
    picks = sorted({round(i * (len(earlier) - 1) / (history - 1)) for i in range(history)})
    return [grids[0]] + [earlier[i] for i in picks]


def build_report(run_dir: Path, warn: Callable[[str], None] = warnings.warn) -> Path:
    """Write ``report.html`` (and its plots) into ``run_dir`` from what the run left there; a
    damaged record or file is passed over, told to ``warn`` and noted on the page."""
    try:
        return _build_report(Path(run_dir), warn)
    except OSError as error:
        if not failed_to_write(error):
            raise
        raise ReportError(f"{describe_write_failure(error)}; free some space (or fix the path) and run `i2i report` again") from None


def _build_report(run_dir: Path, warn: Callable[[str], None] = warnings.warn) -> Path:
    if not (run_dir / "recipe.yaml").is_file():
        raise ReportError(f"{run_dir} is not a run directory (no recipe.yaml); pass the folder `i2i run` wrote")
    own_folder(run_dir / PLOTS)  # plots are written and deleted there: never through a link
    skipped: list[str] = []
    records = read_log(run_dir, skipped)
    curves = series(records)
    losses = {k: v for k, v in curves.items() if is_loss(k)}
    metrics = {k: v for k, v in curves.items() if not is_loss(k)}
    plots = []
    for name, group in (("losses", losses), ("metrics", metrics)):
        target = run_dir / PLOTS / f"{name}.png"
        if group:
            plots.append(plot(group, target, name).relative_to(run_dir).as_posix())
        else:
            target.unlink(missing_ok=True)

    env = read_environment(run_dir / ENVIRONMENT, skipped)
    rates = [float(r["steps_per_s"]) for r in records if _is_number(r.get("steps_per_s"))]
    if rates:
        env["steps/s (median of log intervals)"] = f"{statistics.median(rates):.3g}"
    last_step = max((r["step"] for r in records), default=0)

    recipe = (run_dir / "recipe.yaml").read_text(errors="replace")
    name = recipe_name(recipe) or run_dir.resolve().name
    for note in skipped:
        warn(f"passed over {note}")
    page = _page(
        title=f"{name}: {run_dir.resolve()}",
        recipe=recipe,
        env=env,
        latest={k: v[-1] for k, v in curves.items()},
        plots=plots,
        grids=sample_grids(run_dir),
        last_step=last_step,
        skipped=skipped,
    )
    target = run_dir / REPORT
    write_file(target, page)  # a browser reloading mid-write never sees half a page
    return target


def read_environment(path: Path, skipped: list[str]) -> dict[str, str]:
    """``environment.json``: a JSON object, shown as text; anything else is described in ``skipped``."""
    if not path.is_file():
        return {}
    try:
        env = json.loads(path.read_text(errors="replace"))
    except ValueError:
        env = None
    if not isinstance(env, dict):
        skipped.append(f"{path}: not a JSON object of environment values")
        return {}
    return {str(key): str(value) for key, value in env.items()}


def recipe_name(text: str) -> str | None:
    """The ``name`` of a recipe's YAML text, where it has one (the report shows the text as it is)."""
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _table(rows: list[tuple[str, str]], header: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .when { color: #666; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
td:nth-child(n+2) { font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 0 0 1.5em; } figcaption { color: #555; }
/* Sample grids are often small (a 32x32 test run): scale them up without blurring. */
.latest img { width: min(100%, 800px); image-rendering: pixelated; }
.history { display: flex; flex-wrap: wrap; gap: 1em; }
.history figure { width: 250px; margin: 0; }
.history img { width: 100%; image-rendering: pixelated; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _page(
    title: str,
    recipe: str,
    env: dict[str, str],
    latest: dict[str, tuple[int, float]],
    plots: list[str],
    grids: list[tuple[int, str]],
    last_step: int,
    skipped: list[str] = (),
) -> str:
    e = html.escape
    values = sorted(latest.items(), key=lambda item: (is_loss(item[0]), item[0]))
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p class='when'>step {last_step} &middot; report written {e(time.strftime('%Y-%m-%d %H:%M:%S'))}</p>",
        f"<p class='skipped'>Passed over (damaged): {e('; '.join(skipped[:SKIPPED_SHOWN]))}"
        f"{e(f' and {len(skipped) - SKIPPED_SHOWN} more') if len(skipped) > SKIPPED_SHOWN else ''}</p>"
        if skipped else "",
        "<h2>Latest values</h2>",
        _table([(k, f"{v:.4g}", str(step)) for k, (step, v) in values], ("name", "value", "at step"))
        if values else "<p>No log records yet.</p>",
        "<h2>Curves</h2>",
        "".join(f"<figure><img src='{e(p)}' alt='{e(p)}'></figure>" for p in plots) or "<p>No curves yet.</p>",
        "<h2>Samples</h2><p>Each row is one fixed image: input | generated | target.</p>",
        "<div class='latest'>" + "".join(_figure(*grid) for grid in grids[:1]) + "</div>"
        if grids else "<p>No sample grids yet.</p>",
        "<h3>Over time</h3><div class='history'>" + "".join(_figure(*grid) for grid in grids[1:]) + "</div>"
        if len(grids) > 1 else "",
        "<h2>Environment</h2>",
        _table(list(env.items())) if env else "<p>Not recorded.</p>",
        f"<h2>Recipe</h2><pre>{e(recipe)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _run_state(run_dir: Path) -> tuple[int, Path | None]:
    """What the report is made of: the log's length and the newest sample grid."""
    log = run_dir / "log.jsonl"
    return (log.stat().st_size if log.is_file() else 0, max((run_dir / "samples").glob("step_*.png"), default=None))


def _figure(step: int, path: str) -> str:
    return (
        f"<figure><img src='{html.escape(path)}' alt='samples at step {step}'>"
        f"<figcaption>step {step}</figcaption></figure>"
    )


class ReportCallback(Callback):
    """Keeps ``report.html`` up to date while a run trains."""

    def __init__(self, trainer: Trainer):
        self.environment = environment(trainer)
        self.written_for: tuple | None = None

    def write(self, trainer: Trainer) -> None:
        # The end of a run usually follows its last sample grid: nothing new to show then.
        state = _run_state(trainer.run_dir)
        if state == self.written_for:
            return
        # A failed write stops the run: `i2i run` reports it in one line.
        write_file(trainer.run_dir / ENVIRONMENT, json.dumps(self.environment, indent=2))
        _build_report(trainer.run_dir)
        self.written_for = state

    def on_sample(self, trainer: Trainer, path: Path) -> None:
        self.write(trainer)

    def on_end(self, trainer: Trainer) -> None:
        self.write(trainer)
