"""Does the input keep up with the step through epoch boundaries? (docs/engine.md, "Steady input")

Builds the trainer as ``i2i run`` does and trains ``--epochs`` whole epochs through its
own batches (``Trainer.batches``: the DataLoader with persistent workers, or the set on
the device) and its own step, timing every ``--window`` steps, with nothing else in the
loop (no logs, samples or checkpoints, which ``i2i run`` adds at every epoch end). Prints
one JSON line: the window times and ``steady_min_over_median`` (``i2i.bench.steady``).

    .venv/bin/python benchmarks/steady_input.py recipes/pix2pix_maps.yaml --set train.device=cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from i2i.bench.steady import steadiness  # noqa: E402
from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a recipe override, as i2i run's")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--window", type=int, default=100, help="steps per timed window")
    args = parser.parse_args()
    trainer = Trainer(Recipe.from_file(args.recipe, args.overrides), run_dir=Path(tempfile.mkdtemp()))
    for network in trainer.networks.values():
        network.train()
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else lambda: None
    times, step, since = [], 0, time.perf_counter()
    for epoch in range(args.epochs):
        trainer.set_epoch(epoch)
        for batch in trainer.batches.epoch():
            real_a, real_b = (batch[k].to(trainer.device, non_blocking=True).contiguous(memory_format=trainer.memory_format)
                              for k in ("input", "target"))
            trainer.train_step(real_a, real_b)
            step += 1
            if step % args.window == 0:
                sync()
                now = time.perf_counter()
                times.append(now - since)
                since = now
    print(json.dumps({"steps": step, "steps_per_epoch": trainer.steps_per_epoch, "window": args.window,
                      "window_s": [round(t, 4) for t in times], "steady_min_over_median": steadiness(times)}))


if __name__ == "__main__":
    main()
