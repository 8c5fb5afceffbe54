"""``i2i data``: list and download the reference datasets, benchmark the input pipeline.

Outside the ``i2i.data`` package so that `i2i --help` does not import torch.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(help="Datasets: list, download, benchmark the loader.", no_args_is_help=True)
console = Console()


@data_app.command("list")
def list_sets(root: Path = typer.Option(Path("data"), "--root", help="where downloaded sets live")) -> None:
    """The downloadable pix2pix and CycleGAN datasets and whether each is already under ROOT."""
    from i2i.data.download import CATALOGUE, CYCLEGAN_URL, REFERENCE_URL

    table = Table("name", "splits (images)", "what", f"in {root}")
    for entry in CATALOGUE.values():
        splits = ", ".join(f"{split} {count or '1+'}" for split, count in entry.splits.items())
        table.add_row(entry.name, splits, entry.description, "yes" if (root / entry.name).is_dir() else "no")
    console.print(table)
    console.print(f"from {REFERENCE_URL} and {CYCLEGAN_URL} (cyclegan/NAME)", highlight=False)


@data_app.command("download")
def download(
    name: str = typer.Argument(..., help="a name from `i2i data list` (cyclegan/horse2zebra)"),
    root: Path = typer.Option(Path("data"), "--root", help="the set goes to ROOT/NAME"),
) -> None:
    """Download, verify and extract a dataset (resumes an interrupted download)."""
    from i2i.data.download import download_dataset

    target = download_dataset(name, root, show_progress=console.is_terminal)
    console.print(f"[green]ok[/green] {name} in {target}")


@data_app.command("bench")
def bench(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    overrides: list[str] = typer.Option([], "--set", help="override a recipe value (repeatable)"),
    samples: int = typer.Option(200, "--samples", min=1, help="samples drawn per measurement"),
) -> None:
    """Loader throughput for a recipe's training set: cold, warm (cached) and on the device."""
    from i2i.bench.loader import bench_loader
    from i2i.recipe import Recipe

    parsed = Recipe.from_file(recipe, overrides)
    results = bench_loader(parsed, samples)
    data = parsed.data
    console.print(
        f"{parsed.name}: {data.dataset.name} at {data.root}, load {data.load_size} crop {data.crop_size}, "
        f"batch {parsed.train.batch_size}, {data.num_workers} worker(s), {int(results['samples'])} samples each",
        highlight=False,
    )
    console.print(f"  cold (decode per sample) {results['cold_per_s']:10.1f} samples/s")
    console.print(f"  cache fill               {results['cache_fill_s']:10.2f} s ({results['cache_mb']:.0f} MB)")
    console.print(f"  warm (cached)            {results['warm_per_s']:10.1f} samples/s")
    if "on_device_per_s" in results:
        console.print(f"  on device                {results['on_device_per_s']:10.1f} samples/s")
    else:
        console.print("  on device                n/a (this dataset crops on the CPU)")
