"""The README's picture: a run's own sample grids side by side, one row per val image.

Each row: the input, what the generator made of it at each of ``--steps`` (the run's
``samples/step_*.png``, drawn as ``i2i translate`` gives by default), and the target.

    .venv/bin/python benchmarks/readme_picture.py runs/maps_1500 --steps 500 1000 1500 --out docs/images/maps_samples.jpg
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

GAP = 2  # pixels between the tiles of a sample grid (i2i.visual.save_grid) and of the picture


def grid_tiles(path: Path) -> list[list[np.ndarray]]:
    """A sample grid (rows of input | generated | target, square tiles) as rows of tiles."""
    grid = np.asarray(Image.open(path).convert("RGB"))
    side = (grid.shape[1] - 2 * GAP) // 3
    rows = (grid.shape[0] + GAP) // (side + GAP)
    return [[grid[r * (side + GAP): r * (side + GAP) + side, c * (side + GAP): c * (side + GAP) + side] for c in range(3)]
            for r in range(rows)]


def picture(run: Path, steps: list[int], rows: int) -> Image.Image:
    grids = {step: grid_tiles(run / "samples" / f"step_{step:08d}.png") for step in steps}
    first = grids[steps[0]]
    rows = min(rows, len(first))
    side = first[0][0].shape[0]
    columns = len(steps) + 2
    canvas = np.full((rows * side + (rows - 1) * GAP, columns * side + (columns - 1) * GAP, 3), 255, np.uint8)
    for row in range(rows):
        tiles = [first[row][0], *(grids[step][row][1] for step in steps), first[row][2]]
        for column, tile in enumerate(tiles):
            top, left = row * (side + GAP), column * (side + GAP)
            canvas[top: top + side, left: left + side] = tile
    return Image.fromarray(canvas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory with samples/step_*.png")
    parser.add_argument("--steps", type=int, nargs="+", required=True)
    parser.add_argument("--rows", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/images/maps_samples.jpg"))
    args = parser.parse_args()
    missing = [step for step in args.steps if not (args.run / "samples" / f"step_{step:08d}.png").is_file()]
    if missing:
        parser.error(f"{args.run / 'samples'} has no grid for step(s) {missing}")
    picture(args.run, args.steps, args.rows).save(args.out, quality=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
