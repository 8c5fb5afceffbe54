"""``i2i run``: a recipe in, a trained run directory out, with a readable console."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from i2i.engine.trainer import Trainer
from i2i.recipe import load_recipe


def _count(module: torch.nn.Module) -> str:
    return f"{sum(p.numel() for p in module.parameters()):,}"


def train_from_recipe(recipe_path: Path, overrides: list[str], out: Path | None, resume: bool, console: Console) -> Trainer:
    recipe = load_recipe(recipe_path, overrides)
    if out is not None:
        recipe = recipe.model_copy(update={"output_dir": out})
    trainer = Trainer(recipe)
    interactive = console.is_terminal and sys.stdout.isatty()
    console.print(
        f"[bold]{recipe.name}[/bold]  device {trainer.device}  precision {str(trainer.amp_dtype).removeprefix('torch.')}\n"
        f"  generator     {recipe.model.generator.name} ({_count(trainer.generator)} parameters)\n"
        f"  discriminator {recipe.model.discriminator.name} ({_count(trainer.discriminator)} parameters)\n"
        f"  data          {recipe.data.dataset.name}: {len(trainer.dataset)} training pairs, "
        f"{trainer.in_channels}->{trainer.out_channels} channels, {recipe.data.direction}\n"
        f"  schedule      {trainer.total_steps} steps ({trainer.steps_per_epoch} per epoch)\n"
        f"  run dir       {trainer.run_dir}",
        highlight=False,
    )
    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not interactive,
    )

    def show(record: dict) -> None:
        losses = "  ".join(f"{k} {v:.3f}" for k, v in record.items() if k.startswith(("G_", "D_")))
        rate = f"{record['steps_per_s']:.2f} steps/s"
        if interactive:
            progress.update(task, completed=record["step"], rate=rate, description=f"epoch {record['epoch']}")
            progress.console.print(f"step {record['step']}  {losses}", highlight=False)
        else:
            print(f"step {record['step']}/{trainer.total_steps} epoch {record['epoch']} {rate}  {losses}", flush=True)

    trainer.on_log = show
    with progress:
        task = progress.add_task("training", total=trainer.total_steps, rate="")
        trainer.fit(resume=resume)
    console.print(
        f"done: {trainer.step} steps. Checkpoints in {trainer.run_dir / 'checkpoints'}, "
        f"samples in {trainer.run_dir / 'samples'}, log in {trainer.run_dir / 'log.jsonl'}",
        highlight=False,
    )
    return trainer
