"""The README's pictures, one row per val image.

A run's own sample grids side by side: the input, what the generator made of it at each of
``--steps`` (the run's ``samples/step_*.png``, drawn as ``i2i translate`` gives by default),
and the target:

    .venv/bin/python benchmarks/readme_picture.py runs/maps_1500 --steps 500 1000 1500 --out docs/images/maps_samples.jpg

Or runs side by side (``--compare``): each run's latest checkpoint translates the val images
``--images`` as ``i2i translate`` does by default (its inference weights, the default mode),
at the quality protocol's 256x256:

    .venv/bin/python benchmarks/readme_picture.py --compare runs/pix2pix runs/maps_plus \
        --data ../shared/data/maps --images 3 17 101 --out docs/images/maps_plus_vs_pix2pix.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from i2i.bench.quality import protocol_dataset  # noqa: E402
from i2i.engine.checkpoint import latest_checkpoint  # noqa: E402
from i2i.engine.inference import generator_mode, load_generator, resolve_generator_file  # noqa: E402
from i2i.modes import DEFAULT_MODE  # noqa: E402
from i2i.visual import GRID_GAP, tile_grid, to_uint8  # noqa: E402


def sample_grid(run: Path, step: int) -> Path:
    """Where the run saved its sample grid of ``step`` (the trainer's naming)."""
    return run / "samples" / f"step_{step:08d}.png"


def grid_columns(path: Path) -> list[np.ndarray]:
    """A sample grid (rows of input | generated | target, square tiles) as its three columns of tiles."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    side = (grid.shape[1] - 2 * GRID_GAP) // 3
    rows = (grid.shape[0] + GRID_GAP) // (side + GRID_GAP)
    return [np.stack([grid[r * (side + GRID_GAP): r * (side + GRID_GAP) + side,
                           c * (side + GRID_GAP): c * (side + GRID_GAP) + side] for r in range(rows)])
            for c in range(3)]


def picture(run: Path, steps: list[int], rows: int) -> Image.Image:
    grids = {step: grid_columns(sample_grid(run, step)) for step in steps}
    inputs, _, targets = grids[steps[0]]
    columns = [inputs, *(grids[step][1] for step in steps), targets]
    return Image.fromarray(tile_grid([column[:rows] for column in columns]))


@torch.no_grad()
def comparison(runs: list[Path], data: Path, images: list[int]) -> Image.Image:
    """Rows of input | each run's translation | target for the val images numbered ``images``."""
    columns: list[list[np.ndarray]] = [[] for _ in range(len(runs) + 2)]
    for column, run in enumerate(runs, 1):
        checkpoint = latest_checkpoint(run)
        if checkpoint is None:
            raise SystemExit(f"{run} has no checkpoint")
        generator, recipe, _ = load_generator(resolve_generator_file(checkpoint), torch.device("cpu"))
        val = protocol_dataset(recipe, data, "val")
        by_name = {Path(val.describe(index)).stem: index for index in range(len(val))}
        with generator_mode(generator, DEFAULT_MODE, recipe.train.seed):
            for number in images:
                if str(number) not in by_name:
                    raise SystemExit(f"no val image {number} in {data / 'val'}")
                item = val[by_name[str(number)]]
                columns[column].append(to_uint8(generator(item["input"][None]).float())[0])
                if column == 1:
                    columns[0].append(to_uint8(item["input"][None])[0])
                    columns[-1].append(to_uint8(item["target"][None])[0])
    return Image.fromarray(tile_grid([np.stack(column) for column in columns]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?", help="a run directory with samples/step_*.png")
    parser.add_argument("--steps", type=int, nargs="+")
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--compare", type=Path, nargs="+", metavar="RUN", help="runs side by side instead")
    parser.add_argument("--data", type=Path, help="--compare: the data set holding val/")
    parser.add_argument("--images", type=int, nargs="+", default=[1, 2, 3], help="--compare: val image numbers")
    parser.add_argument("--out", type=Path, default=Path("docs/images/maps_samples.jpg"))
    args = parser.parse_args()
    if args.compare:
        if args.data is None:
            parser.error("--compare needs --data")
        comparison(args.compare, args.data, args.images).save(args.out, quality=90)
        print(f"wrote {args.out}")
        return
    if args.run is None or not args.steps:
        parser.error("give a run and --steps, or --compare RUN RUN")
    missing = [step for step in args.steps if not sample_grid(args.run, step).is_file()]
    if missing:
        parser.error(f"{args.run / 'samples'} has no grid for step(s) {missing}")
    picture(args.run, args.steps, args.rows).save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
