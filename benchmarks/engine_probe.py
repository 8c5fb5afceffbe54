"""What the fast engine chooses for a recipe on this machine, and the timings behind it.

Builds the trainer exactly as ``i2i run`` does at its start (the probe runs on a
recipe shape's first run here, or the cached choice is read), prints the start
summary's engine lines and every comparison the probe timed, and trains nothing.

    .venv/bin/python benchmarks/engine_probe.py recipes/pix2pix_maps.yaml
    .venv/bin/python benchmarks/engine_probe.py recipes/pix2pix_maps.yaml --set train.device=cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a recipe override, as i2i run's")
    args = parser.parse_args()
    recipe = Recipe.from_file(args.recipe, args.overrides)
    trainer = Trainer(recipe, run_dir=Path(tempfile.gettempdir()) / "i2i-engine-probe")
    print(f"{recipe.name}, {trainer.total_steps} planned steps on {trainer.device}:")
    print(f"engine {trainer.engine.summary()}")
    for comparison in trainer.engine.comparisons:
        print(json.dumps(comparison))


if __name__ == "__main__":
    main()
