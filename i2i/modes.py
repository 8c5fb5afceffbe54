"""The generator's modes at inference: how its BatchNorm and dropout layers behave
(applied by ``i2i.engine.inference.generator_mode``; measured in docs/bench.md)."""

from typing import Literal

Mode = Literal["eval", "instance", "train"]
MODES: tuple[Mode, ...] = ("eval", "instance", "train")
# What translate, load, export, the demo and the evaluation during training use unless told.
# A generator trained at batch size 1 (the pix2pix recipes) only ever normalized each image
# by its own statistics: eval mode's stored statistics cost it 53 to 65 FID on maps val
# (benchmarks/README.md, quality modes).
DEFAULT_MODE: Mode = "instance"
MODES_HELP = ("eval: stored BatchNorm statistics, no dropout; instance: each image normalized by its own statistics, "
              "no dropout; train: each image's own statistics and dropout, as the pix2pix reference tests")
