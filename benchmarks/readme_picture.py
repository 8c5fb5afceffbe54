"""The README's picture: a run's own sample grids side by side, one row per val image.

Each row: the input, what the generator made of it at each of ``--steps`` (the run's
``samples/step_*.png``, drawn as ``i2i translate`` gives by default), and the target.

    .venv/bin/python benchmarks/readme_picture.py runs/maps_1500 --steps 500 1000 1500 --out docs/images/maps_samples.jpg
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from i2i.visual import GRID_GAP, tile_grid  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory with samples/step_*.png")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/images/maps_samples.jpg"))
    args = parser.parse_args()
    missing = [step for step in args.steps if not sample_grid(args.run, step).is_file()]
    if missing:
        parser.error(f"{args.run / 'samples'} has no grid for step(s) {missing}")
    picture(args.run, args.steps, args.rows).save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
