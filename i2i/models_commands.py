"""``i2i models`` (the catalogue of published generators) and ``i2i import-weights``.

Imports of torch wait inside the commands so that `i2i --help` stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Column, Table

models_app = typer.Typer(help="Published pix2pix, CycleGAN and CUT generators: list, download.", no_args_is_help=True)
console = Console()


@models_app.command("list")
def list_models() -> None:
    """The catalogue: each generator, what it translates, the i2i recipe and direction it matches, cached or not."""
    from i2i.model_catalogue import CYCLEGAN_RECIPE, MODELS, URL_ENV, default_cache, is_cached, models_url

    def show(title: str, column: str, rows: list) -> None:
        # The names are typed by users: never cut short.
        table = Table(Column("name", no_wrap=True), "task", Column(column, overflow="fold"), "direction", "cached",
                      title=title, title_justify="left")
        for entry, detail in rows:
            table.add_row(entry.name, entry.task, detail, entry.direction, "yes" if is_cached(entry.name) else "no")
        console.print(table)

    # A table per family, so that the long CycleGAN names do not squeeze the pix2pix rows.
    show("pix2pix (U-Net 256)", "recipe",  # a shipped recipe's name, or the file name of a recipe path
         [(e, Path(e.recipe).stem) for e in MODELS.values() if e.family == "pix2pix"])
    show(f"CycleGAN (ResNet, 9 blocks: recipe {CYCLEGAN_RECIPE})", "trained on",
         [(e, Path(e.data_root or "").name) for e in MODELS.values() if e.family == "CycleGAN"])
    show("CUT and FastCUT (anti-aliased ResNet, 9 blocks)", "trained on",
         [(e, Path(e.data_root or "").name) for e in MODELS.values() if e.family == "CUT"])
    source = f"set by {URL_ENV}" if os.environ.get(URL_ENV) else f"{URL_ENV} overrides"
    console.print(f"cache {default_cache()}; from {models_url()} ({source})", highlight=False, soft_wrap=True)
    console.print(f"CycleGAN generators from {models_url(cyclegan=True)}", highlight=False, soft_wrap=True)
    console.print(f"CUT generators from {models_url(cut=True)}/pretrained_models.tar (one archive for all six)",
                  highlight=False, soft_wrap=True)


@models_app.command("download")
def download(name: str = typer.Argument(..., help="a name from `i2i models list`")) -> None:
    """Download (resuming an interrupted download), verify and convert a published generator."""
    from i2i.model_catalogue import ensure_model

    folder = ensure_model(name, show_progress=console.is_terminal)
    console.print(f"[green]ok[/green] {name} in {folder}", highlight=False, soft_wrap=True)
    console.print(f"  i2i translate --checkpoint {folder} --input IMAGES --output OUT", highlight=False, soft_wrap=True)


def import_weights(
    file: Path = typer.Argument(..., help="a U-Net or ResNet generator saved by the pix2pix/CycleGAN or CUT reference (latest_net_G.pth, horse2zebra.pth)"),
    recipe: str = typer.Option(..., "--recipe", help="a shipped recipe's name (pix2pix_maps, cyclegan_horse2zebra) or a recipe YAML with the same generator"),
    output: Optional[Path] = typer.Option(None, "--output", help="checkpoint folder to write (default: FILE without .pth, beside it)"),
) -> None:
    """Convert a generator saved by the PyTorch pix2pix/CycleGAN reference, or by CUT's (with a recipe of the
    anti-aliased ResNet, as cut_horse2zebra), into an i2i checkpoint folder."""
    from i2i.engine.inference import GENERATOR_FILE
    from i2i.recipe import Recipe
    from i2i.reference_weights import WeightsError, import_reference_weights
    from i2i.run_dir import enclosing_run

    output = output or file.with_suffix("")
    if (output / GENERATOR_FILE).exists():
        raise WeightsError(f"{output} already holds a {GENERATOR_FILE}; choose another --output or delete it")
    if run := enclosing_run(output):  # translate would prefer the imported generator to the run's checkpoints
        raise WeightsError(f"--output {output} is inside the {run}; choose a folder outside it")
    if output.exists() and not output.is_dir():
        raise WeightsError(f"--output {output} is a file; give a folder (it is created if missing)")
    parsed = Recipe.from_file(recipe)
    folder = import_reference_weights(file, parsed, output)
    console.print(f"[green]ok[/green] {file} -> {folder} (recipe {parsed.name}, {parsed.data.direction})", highlight=False, soft_wrap=True)
    console.print(f"  i2i translate --checkpoint {folder} --input IMAGES --output OUT", highlight=False, soft_wrap=True)
