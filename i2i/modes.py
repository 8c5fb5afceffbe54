"""The generator's modes at inference: how its BatchNorm and dropout layers behave
(applied by ``i2i.engine.inference.generator_mode``; measured in docs/bench.md)."""

from typing import Literal

Mode = Literal["eval", "instance", "train"]
MODES: tuple[Mode, ...] = ("eval", "instance", "train")
DEFAULT_MODE: Mode = "eval"  # what translate, load, export and the demo use unless told
MODES_HELP = ("eval: stored BatchNorm statistics, no dropout; instance: each image normalized by its own statistics, "
              "no dropout; train: each image's own statistics and dropout, as the pix2pix reference tests")
