"""The ``i2i`` command line."""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from i2i.version import __version__
from i2i.bench.cli import app as bench_app
from i2i.data_commands import data_app
from i2i.errors import I2IError
from i2i.modes import DEFAULT_MODE, MODES_HELP
from i2i.models_commands import import_weights, models_app
from i2i.registry import REGISTRIES
from i2i.sharing_commands import demo, push

app = typer.Typer(
    help="Image-to-image translation, paired (pix2pix) and unpaired (CycleGAN, CUT): train, evaluate, translate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)
app.add_typer(data_app, name="data")
app.add_typer(bench_app, name="bench")
app.add_typer(models_app, name="models")
app.command("import-weights")(import_weights)
app.command("push")(push)
app.command("demo")(demo)

SetOption = typer.Option([], "--set", help="override a recipe value: --set train.lr=1e-4 (repeatable)")


def _version(value: bool) -> None:
    if value:
        print(f"i2i {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    pass


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    overrides: list[str] = SetOption,
    out: Optional[str] = typer.Option(None, "--out", help="run directory (default: the recipe's output_dir)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the run directory's last checkpoint"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no summary and no progress, only the final lines"),
    tensorboard: bool = typer.Option(True, "--tensorboard/--no-tensorboard", help="log to <run dir>/tensorboard (also train.tensorboard)"),
    nproc: int = typer.Option(1, "--nproc", help="train in N processes with DistributedDataParallel (starts torchrun)"),
    force_nproc: bool = typer.Option(False, "--force-nproc", help="start --nproc N processes even where N is above the GPUs, CPU cores or memory here"),
    overwrite: bool = typer.Option(False, "--overwrite", help="the run directory holds a run: move it aside to <dir>.old-<time> and start afresh"),
    allow_changes: bool = typer.Option(False, "--allow-changes", help="with --resume: accept recipe changes beyond the schedule and cadence (lr, crop, ...)"),
) -> None:
    """Train from a recipe; the run directory gets checkpoints, samples, log.jsonl and report.html."""
    from i2i.engine import distributed
    from i2i.run import check_before_launch, train_from_recipe

    if out == "":  # Path("") would be the current folder
        raise I2IError("--out is empty; give a run directory (without --out: the recipe's output_dir, else runs/<name>)")
    run_dir = None if out is None else Path(out)
    if nproc < 1:  # before the run directory is made
        raise I2IError(f"--nproc {nproc}: a run needs at least one process")

    if nproc != 1:
        check_before_launch(recipe, overrides, run_dir, resume, overwrite, allow_changes, console, nproc, force_nproc)
        distributed.launch(nproc, distributed.without_option(sys.argv[1:], "--nproc"))
        return
    run_console = console
    if distributed.launched_by_torchrun():
        distributed.init_from_torchrun()
        run_console = console if distributed.rank_and_world_size()[0] == 0 else Console(quiet=True)
    finished = False
    try:
        train_from_recipe(recipe, overrides, run_dir, resume, run_console, quiet=quiet, tensorboard=tensorboard,
                          overwrite=overwrite, allow_changes=allow_changes)
        finished = True
    finally:
        distributed.leave(finished)


@app.command()
def report(run_dir: Path = typer.Argument(..., help="a run directory written by `i2i run`")) -> None:
    """Rebuild a run directory's report.html (samples, curves, metrics, recipe, environment)."""
    from i2i.report import build_report

    console.print(f"wrote {build_report(run_dir, _warn)}", highlight=False)


def _warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)


@app.command()
def validate(
    recipe: Path = typer.Argument(..., help="recipe YAML"),
    overrides: list[str] = SetOption,
    as_json: bool = typer.Option(False, "--json", help="print the resolved recipe and model sizes as JSON"),
) -> None:
    """Check a recipe and build its models without training."""
    from i2i.engine.build import build_method, network_name
    from i2i.engine.limits import check_limits
    from i2i.recipe import Recipe

    parsed = Recipe.from_file(recipe, overrides)
    check_limits(parsed, str(recipe))
    networks = build_method(parsed).build_networks(*_channels(parsed))
    sizes = {
        role: {"name": network_name(parsed, role, network), "parameters": sum(p.numel() for p in network.parameters())}
        for role, network in networks.items()
    }
    if as_json:
        print(json.dumps({"recipe": parsed.model_dump(mode="json"), **sizes}, indent=2))
        return
    console.print(f"[green]ok[/green] {recipe}: {parsed.name}")
    for role, size in sizes.items():
        console.print(f"  {role:<16} {size['name']:<12} {size['parameters']:>12,} parameters")


def _channels(recipe) -> tuple[int, int]:
    """Channel counts come from the dataset; a missing data folder falls back to RGB."""
    from i2i.engine.build import build_dataset

    try:
        dataset = build_dataset(recipe, "train", train=True)
        return dataset.in_channels, dataset.out_channels
    except I2IError:
        return 3, 3


@app.command("list")
def list_components(
    kind: Optional[str] = typer.Argument(None, help="generators, discriminators, losses or datasets"),
    pattern: str = typer.Argument("*", help="fnmatch pattern, e.g. 'unet*'"),
    params: bool = typer.Option(False, "--params", help="show each component's parameters"),
) -> None:
    """List components: built-in ones and those of installed plugins, with their origin.

    i2i list generators unet --params   shows what a recipe may set under params.
    """
    from rich.table import Table

    kinds = list(REGISTRIES) if kind is None else [_kind(kind)]
    found = [(name, entry) for name in kinds for entry in REGISTRIES[name].entries(pattern)]
    table = Table("kind", "name", "origin")
    for name, entry in found:
        table.add_row(name, entry.name, entry.origin)
    if found:
        console.print(table)
    else:
        err_console.print(f"no {' or '.join(kinds)} match {pattern!r}")
    if params:
        for name, entry in found:
            schema = Table("parameter", "type", "default", "constraints and meaning",
                           title=f"{name} {entry.name} ({entry.origin})", title_justify="left")
            for row in _describe_params(entry.params):
                schema.add_row(*row)
            console.print(schema)
    for name in kinds:
        for failure in REGISTRIES[name].failures:
            err_console.print(f"[yellow]warning:[/yellow] {escape(str(failure))}", highlight=False)


def _kind(text: str) -> str:
    """A registry name; the singular ('generator') is accepted too."""
    for name in REGISTRIES:
        if text in (name, name.removesuffix("s")):
            return name
    raise I2IError(f"unknown kind {text!r}; choose from {', '.join(REGISTRIES)}")


def _describe_params(model) -> list[tuple[str, str, str, str]]:
    """(name, type, default, constraints and description) for each field of a params model."""
    rows = []
    for field_name, field in model.model_fields.items():
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        bounds = [f"{symbol} {getattr(m, attr)}" for m in field.metadata for attr, symbol in _BOUNDS if hasattr(m, attr)]
        meaning = ", ".join(bounds) + ("; " if bounds and field.description else "") + (field.description or "")
        rows.append((field_name, _type_name(field.annotation), default, meaning))
    return rows


_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))


def _type_name(annotation) -> str:
    """Types as a recipe author reads them: 'batch' | 'instance' | 'none', int | None, list[int]."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


@app.command()
def translate(
    checkpoint: str = typer.Option(..., "--checkpoint", help="run directory (its newest good checkpoint), checkpoint folder, generator .safetensors, .onnx export, catalogue model name or hf://owner/repo[@revision]"),
    input: Path = typer.Option(..., "--input", help="an image or a folder of images"),
    output: Path = typer.Option(..., "--output", help="folder for the translated images (never one that would overwrite an input)"),
    aligned: bool = typer.Option(False, "--aligned", help="inputs are A|B pairs: take the recipe's input side"),
    mode: str = typer.Option(DEFAULT_MODE, "--mode", help=MODES_HELP),
    device: str = typer.Option("auto", "--device"),
    tile: int = typer.Option(1024, "--tile", help="larger images are translated in overlapping tiles of this size (rounded down to the generator's size multiple)"),
    overlap: int = typer.Option(64, "--overlap", help="pixels shared by neighbouring tiles (blended); below the rounded tile"),
    batch_size: int = typer.Option(1, "--batch-size", help="images (of one size) or tiles per forward pass"),
    backend: str = typer.Option("torch", "--backend", help="torch; fast (bf16 where the hardware has it, in the memory layout timed faster; same result to bf16 rounding); compiled (fast, through torch.compile with frozen weights: a minute or more to compile, then the fastest on CPU); onnxruntime (the export in --mode eval or instance, made on the fly unless --checkpoint is an .onnx file, which runs in the mode it was exported in)"),
    on_bad_image: str = typer.Option("error", "--on-bad-image", help="error: stop at an image that cannot be read; skip: report it and go on"),
    direction: str = typer.Option("AtoB", "--direction", help="AtoB: the run's translation (recipe input -> target); BtoA: its other generator, where the method trains one (cyclegan)"),
) -> None:
    """Translate images with a trained generator, at their own size (PNG named after the input: x.jpg -> x.png, or x.jpg.png where inputs share a stem)."""
    from rich.progress import Progress

    from i2i.translate import translate_paths

    skipped = []

    def skip(file: Path, reason: str) -> None:
        skipped.append(file)
        err_console.print(f"[yellow]skipped:[/yellow] {escape(reason)}", highlight=False)

    def warn(message: str) -> None:
        err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False)

    with Progress(console=console, disable=not console.is_terminal, transient=True) as progress:
        task = progress.add_task("translating", total=None)
        written = translate_paths(
            checkpoint, input, output, aligned=aligned, mode=mode, device=device, tile=tile, overlap=overlap,
            batch_size=batch_size, on_progress=lambda done, total: progress.update(task, completed=done, total=total),
            backend=backend, on_bad_image=on_bad_image, on_skip=skip, warn=warn, direction=direction,
        )
    note = f"; skipped {len(skipped)} unreadable image(s), listed above" if skipped else ""
    console.print(f"wrote {len(written)} image(s) to {output}{note}", highlight=False)


@app.command("export")
def export_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="run directory, checkpoint folder or generator .safetensors"),
    format: str = typer.Option("onnx", "--format", help="onnx or pt2 (torch.export)"),
    output: Optional[Path] = typer.Option(None, "--output", help="file to write (default: <recipe name>_generator.<format>, <recipe name>_generator_BtoA.<format> with --direction BtoA)"),
    size: Optional[int] = typer.Option(None, "--size", help="side of the check image (default: the recipe's crop size)"),
    force: bool = typer.Option(False, "--force", help="replace a previous export at --output (never another file)"),
    direction: str = typer.Option("AtoB", "--direction", help="AtoB: the run's translation (recipe input -> target); BtoA: its other generator, where the method trains one (cyclegan)"),
    mode: str = typer.Option(DEFAULT_MODE, "--mode", help="eval or instance (train mode's dropout does not export); " + MODES_HELP),
) -> None:
    """Export the generator in a deterministic mode (ONNX or torch.export), checked against PyTorch."""
    from i2i.export import TOLERANCE, export_generator

    exported = export_generator(checkpoint, format, output, size, force, direction, mode)
    console.print(
        f"wrote {exported.path}: max abs difference to PyTorch {exported.max_abs_diff:.1e} (limit {TOLERANCE})",
        highlight=False,
    )


def main() -> None:
    try:
        app()
    except I2IError as error:
        err_console.print("[bold red]error:[/bold red]", escape(str(error)), highlight=False, soft_wrap=True)
        sys.exit(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
