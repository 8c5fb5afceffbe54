"""``i2i push`` (a run's generator to the Hugging Face Hub) and ``i2i demo`` (a web page for a generator).

Their optional packages (huggingface_hub, gradio) and torch are imported inside the
commands so that `i2i --help` stays quick.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from i2i.bench import RESULTS_DIR

console = Console()
err_console = Console(stderr=True)


def push(
    run_dir: Path = typer.Argument(..., help="a run directory written by `i2i run`"),
    repo: str = typer.Option(..., "--repo", help="Hub repository owner/name (created if missing)"),
    revision: Optional[str] = typer.Option(None, "--revision", help="branch to push to (created if missing; default main)"),
    private: bool = typer.Option(False, "--private", help="create the repository private"),
    results: Path = typer.Option(RESULTS_DIR / "quality.jsonl", "--results", help="`i2i bench quality` records: those of this run go into the model card"),
) -> None:
    """Publish a run's generator, recipe, newest sample grid and a model card on the Hugging Face Hub (token: HF_TOKEN or `hf auth login`)."""
    from i2i.hub import push_to_hub

    pushed = push_to_hub(run_dir, repo, revision, private, quality_results=results,
                         warn=lambda message: err_console.print(f"[yellow]warning:[/yellow] {escape(message)}", highlight=False))
    console.print(f"pushed step {pushed.step} of {run_dir} ({', '.join(pushed.files)}) to {pushed.url}", highlight=False)
    console.print(f'load it with i2i.load("hf://{repo}{"@" + revision if revision else ""}")', highlight=False)


def demo(
    source: str = typer.Argument(..., help="run directory, checkpoint folder, .safetensors, .onnx, catalogue model name or hf://owner/repo[@revision]"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; 0.0.0.0 opens the page to the network"),
    port: Optional[int] = typer.Option(None, "--port", help="port (default: the first free one from 7860)"),
    device: str = typer.Option("auto", "--device"),
    direction: str = typer.Option("AtoB", "--direction", help="AtoB: the run's translation (recipe input -> target); BtoA: its other generator, where the method trains one (cyclegan)"),
) -> None:
    """A web page to try a generator: drop an image, pick a generator mode (instance by default, eval or train), see the result (gradio)."""
    from i2i.demo import serve

    serve(source, host, port, device, direction=direction,
          on_ready=lambda url: console.print(f"demo running at {url} (Ctrl+C stops it)", highlight=False))
