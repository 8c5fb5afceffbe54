"""``i2i run``: a recipe in, a trained run directory out, with a readable console.

The one place that wires a run together: the data, the trainer, and every
observer of it (evaluation, the report, TensorBoard, the console).

In a terminal: a summary, then a progress bar for the epoch and one for the
whole run (steps/s, ETA, latest losses), then where everything was written.
Elsewhere (CI, a file): the same summary and one plain line per log record.
``quiet``: only the final line.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from i2i.bench.during_training import EvaluationCallback
from i2i.data.download import ensure_data
from i2i.engine.callbacks import Callback
from i2i.engine.checkpoint import latest_checkpoint
from i2i.engine.budget import describe
from i2i.engine.build import network_name, resolve_device
from i2i.engine.distributed import barrier, local_rank, process_count_problem, rank_and_world_size
from i2i.engine.limits import check_limits, parameter_count
from i2i.engine.run_log import is_loss
from i2i.engine.tensorboard import TensorBoardCallback
from i2i.engine.trainer import Trainer
from i2i.errors import I2IError
from i2i.recipe import Recipe
from i2i.report import REPORT, ReportCallback
from i2i.run_dir import check_resume_changes, claim_run_dir
from i2i.safe_files import describe_write_failure, failed_to_write, is_disk_full


def _count(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()):,}"


def format_losses(record: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.3f}" for k, v in record.items() if is_loss(k) and isinstance(v, (int, float)))


def format_duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


class RateColumn(ProgressColumn):
    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} steps/s" if task.speed else "", style="progress.data.speed")


class ConsoleCallback(Callback):
    """Progress bars in a terminal, plain lines elsewhere."""

    def __init__(self, trainer: Trainer, console: Console):
        self.console = console
        self.interactive = console.is_terminal
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[losses]}"),
            console=console,
            disable=not self.interactive,
        )
        self.epochs = -(-trainer.total_steps // trainer.steps_per_epoch)
        self.epoch_task = self.progress.add_task("epoch", total=trainer.steps_per_epoch, losses="")
        self.total_task = self.progress.add_task("total", total=trainer.total_steps, losses="")
        self.epoch = -1

    def on_step(self, trainer: Trainer) -> None:
        if not self.interactive:
            return
        epoch, done_in_epoch = divmod(trainer.step - 1, trainer.steps_per_epoch)
        if self.progress.tasks[self.total_task].total != trainer.total_steps:  # a schedule fitted to the time budget
            self.epochs = -(-trainer.total_steps // trainer.steps_per_epoch)
            self.progress.update(self.total_task, total=trainer.total_steps)
            self.epoch = -1
        if epoch != self.epoch:
            self.epoch = epoch
            left = min(trainer.steps_per_epoch, trainer.total_steps - epoch * trainer.steps_per_epoch)
            self.progress.reset(self.epoch_task, total=left, description=f"epoch {epoch + 1}/{self.epochs}")
        self.progress.update(self.epoch_task, completed=done_in_epoch + 1)
        self.progress.update(self.total_task, completed=trainer.step)

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        if "steps_per_s" not in record:
            return  # an evaluation record: the evaluation prints its own line
        if self.interactive:
            self.progress.update(self.total_task, losses=format_losses(record))
            return
        elapsed = time.perf_counter() - self.started
        eta = (trainer.total_steps - record["step"]) / record["steps_per_s"] if record["steps_per_s"] else 0.0
        print(
            f"step {record['step']}/{trainer.total_steps}  epoch {record['epoch'] + 1}  "
            f"{record['steps_per_s']:.2f} steps/s  elapsed {format_duration(elapsed)}  eta {format_duration(eta)}  "
            f"{format_losses(record)}",
            flush=True,
        )


def _training_samples(dataset) -> str:
    """``N training pairs``, or for a set without pairs the two sides' image counts."""
    sizes = dataset.unpaired_sizes() if not dataset.pairs else None
    if sizes:
        return f"{sizes[0]} input and {sizes[1]} target images (unpaired)"
    return f"{len(dataset)} training {'pairs' if dataset.pairs else 'samples (unpaired)'}"


def start_summary(trainer: Trainer, tensorboard: bool) -> str:
    recipe = trainer.recipe
    return (
        f"[bold]{escape(recipe.name)}[/bold]{'  ' + escape(recipe.description) if recipe.description else ''}\n"
        f"  device        {trainer.device}, precision {str(trainer.amp_dtype).removeprefix('torch.')}, torch {torch.__version__}\n"
        f"  engine        {escape(trainer.engine.summary(' ' * 16))}\n"
        # Every network of the method (CycleGAN: four; CUT: G, the NCE heads, D), as i2i validate lists them.
        + "".join(f"  {role:<13} {network_name(recipe, role, net)} ({_count(net)} parameters)\n"
                  for role, net in trainer.networks.items())
        + f"  losses        {', '.join(f'{s.weight:g} x {s.name}' for s in recipe.losses)}\n"
        f"  data          {recipe.data.dataset.name} in {recipe.data.root}: {_training_samples(trainer.dataset)}, "
        f"{trainer.in_channels}->{trainer.out_channels} channels, {recipe.data.direction}, "
        f"crop {recipe.data.crop_size}, batch {recipe.train.batch_size}\n"
        f"  schedule      {trainer.total_steps} steps ({trainer.steps_per_epoch} per epoch), lr {recipe.train.lr:g}"
        f"{budget_note(recipe)}\n"
        f"  run dir       {trainer.run_dir}  (tensorboard {'on' if tensorboard else 'off'})"
    )


def budget_note(recipe: Recipe) -> str:
    train = recipe.train
    if train.time_budget is None:
        return ""
    fit = ", the schedule fitted to it" if train.budget_schedule == "fit" else ""
    return f", time budget {describe(train.time_budget)}{fit}"


def end_summary(trainer: Trainer, losses: dict[str, float], seconds: float, tensorboard: bool) -> str:
    run_dir = trainer.run_dir
    lines = [
        f"[bold green]done[/bold green]: {trainer.step} steps in {format_duration(seconds)}"
        f"{' (time budget spent)' if trainer.budget_spent else ''}  {format_losses(losses)}",
        f"  report        {run_dir / REPORT}",
        f"  samples       {run_dir / 'samples'}",
        f"  checkpoints   {run_dir / 'checkpoints'}",
        f"  log           {run_dir / 'log.jsonl'}",
    ]
    if tensorboard:
        lines.append(f"  tensorboard   tensorboard --logdir {run_dir / 'tensorboard'}")
    return "\n".join(lines)


def build_trainer(recipe: Recipe, run_dir: Path | None = None, tensorboard: bool = True, quiet: bool = False) -> Trainer:
    """A trainer with the observers the recipe asks for (the console is added by ``train_from_recipe``)."""
    trainer = Trainer(recipe, run_dir=run_dir, quiet=quiet)
    if not trainer.is_main:
        return trainer
    if recipe.train.eval_every:
        trainer.callbacks.append(EvaluationCallback(trainer))
    trainer.callbacks.append(ReportCallback(trainer))
    if tensorboard and recipe.train.tensorboard:  # a writer makes its event file at once: rank 0's alone is wanted
        trainer.callbacks.append(TensorBoardCallback(trainer.run_dir / "tensorboard"))
    return trainer


def train(
    recipe: str | Path | Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    allow_changes: bool = False,
    quiet: bool = False,
    **overrides: Any,
) -> Path:
    """Train as ``i2i run`` does, from a recipe file or a ``Recipe``; returns the run directory
    (``i2i.train`` in notebooks).

    Each override sets one recipe value, its sections joined by a double underscore
    (``i2i.train("recipes/pix2pix_maps.yaml", train__max_steps=100, output_dir="runs/x")``)
    or by dots through a dict (``**{"train.max_steps": 100}``). Values are Python values,
    not YAML text. ``resume`` continues from the run directory's last checkpoint,
    ``overwrite`` moves a finished run there aside first and ``allow_changes`` resumes with
    a changed recipe (as ``i2i run --overwrite`` / ``--allow-changes``); ``quiet`` prints
    only the final lines."""
    changes = {key.replace("__", "."): value for key, value in overrides.items()}
    if isinstance(recipe, Recipe):
        recipe = recipe.variant(**changes)
    else:
        recipe = Recipe.from_file(recipe, [f"{key}={json.dumps(value, default=str)}" for key, value in changes.items()])
    trainer = train_from_recipe(
        recipe, [], None, resume, Console(), quiet=quiet, overwrite=overwrite, allow_changes=allow_changes
    )
    return trainer.run_dir


def train_from_recipe(
    recipe: Path | Recipe,
    overrides: list[str],
    out: Path | None,
    resume: bool,
    console: Console,
    quiet: bool = False,
    tensorboard: bool = True,
    overwrite: bool = False,
    allow_changes: bool = False,
) -> Trainer:
    recipe = _checked_recipe(recipe, overrides, out)
    is_main = rank_and_world_size()[0] == 0
    note = _printer(console)
    # Rank 0 alone holds the run directory (its lock, its checks) while the run lives.
    with claim_run_dir(recipe.run_dir, resume, overwrite, note) if is_main else contextlib.nullcontext():
        if is_main and resume:
            check_resume_changes(recipe.run_dir, recipe.model_dump(mode="json"), allow_changes, note)
        return _train(recipe, console, resume, quiet, tensorboard, is_main)


def check_before_launch(
    recipe: Path, overrides: list[str], out: Path | None, resume: bool, overwrite: bool, allow_changes: bool,
    console: Console, nproc: int, force_nproc: bool = False,
) -> None:
    """``--nproc N``: rank 0's checks, made once before the ranks start, so that a refusal is one
    line rather than N processes failing at a barrier (rank 0 claims the directory again to train).
    N must fit the machine (GPUs or CPU cores, and memory) unless ``force_nproc``."""
    recipe = _checked_recipe(recipe, overrides, out)
    problem = process_count_problem(nproc, resolve_device(recipe.train.device), parameter_count(recipe) or 0)
    if problem and not force_nproc:
        raise I2IError(f"{problem}; use fewer processes, or --force-nproc to start them anyway")
    with claim_run_dir(recipe.run_dir, resume, overwrite, _printer(console)):
        if resume:  # rank 0 prints the changes
            check_resume_changes(recipe.run_dir, recipe.model_dump(mode="json"), allow_changes, note=lambda _: None)


def _checked_recipe(recipe: Path | Recipe, overrides: list[str], out: Path | None) -> Recipe:
    source = recipe.name if isinstance(recipe, Recipe) else str(recipe)
    if not isinstance(recipe, Recipe):
        recipe = Recipe.from_file(recipe, overrides)
    if out is not None:
        recipe = recipe.model_copy(update={"output_dir": out})
    check_limits(recipe, source)
    return recipe


def _printer(console: Console) -> Callable[[str], None]:
    return lambda text: console.print(text, markup=False, highlight=False, soft_wrap=True)


class RunWriteError(I2IError):
    pass


@contextlib.contextmanager
def stopping_on_write_failures(run_dir: Path) -> Iterator[None]:
    """A sample grid, a log line or the report that cannot be written (a full disk above all)
    stops the run in one line; a checkpoint says so itself (CheckpointError)."""
    try:
        yield
    except OSError as error:
        if not failed_to_write(error):
            raise
        kept = latest_checkpoint(run_dir)
        since = f"the newest checkpoint {kept} is intact" if kept else "no checkpoint was saved yet"
        fix = "Free some space" if is_disk_full(error) else "Fix that"
        raise RunWriteError(f"{describe_write_failure(error)}; {since}. {fix} and continue with --resume") from None


def _train(recipe: Recipe, console: Console, resume: bool, quiet: bool, tensorboard: bool, is_main: bool) -> Trainer:
    """Data, trainer, console: the run itself, in a directory already claimed."""
    if is_main:  # data.download: one process fetches a missing root ...
        ensure_data(recipe.data, show_progress=console.is_terminal and not quiet)
    barrier()  # ... while the others wait for it
    if local_rank() == 0 and not is_main:  # then each other node without a shared filesystem fetches its own
        ensure_data(recipe.data, show_progress=False)
    barrier()
    trainer = build_trainer(recipe, tensorboard=tensorboard, quiet=quiet)
    tensorboard = tensorboard and recipe.train.tensorboard
    started = time.perf_counter()
    if quiet:
        with stopping_on_write_failures(trainer.run_dir):
            losses = trainer.fit(resume=resume)
    else:
        console.print(start_summary(trainer, tensorboard), highlight=False, soft_wrap=True)
        display = ConsoleCallback(trainer, console)
        trainer.callbacks.append(display)
        with display.progress, stopping_on_write_failures(trainer.run_dir):
            losses = trainer.fit(resume=resume)
    summary = end_summary(trainer, losses, time.perf_counter() - started, tensorboard)
    console.print("\n".join(summary.splitlines()[:2]) if quiet else summary, highlight=False, soft_wrap=True)
    return trainer
