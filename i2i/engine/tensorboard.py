"""TensorBoard logging: every logged number as a scalar, every sample grid as an image.

``tensorboard --logdir runs`` then compares runs side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from i2i.engine.callbacks import Callback
from i2i.engine.trainer import Trainer
from i2i.errors import I2IError

# Recorded as the x axis, not as curves of their own.
NOT_SCALARS = {"step", "epoch"}


class TensorBoardCallback(Callback):
    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise I2IError(
                "TensorBoard logging needs the tensorboard package: pip install tensorboard "
                "(or turn it off with train.tensorboard=false / --no-tensorboard)"
            ) from None
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir))

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        step = int(record.get("step", trainer.step))
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(_tag(key), value, step)

    def on_sample(self, trainer: Trainer, path: Path) -> None:
        with Image.open(path) as grid:
            pixels = np.asarray(grid.convert("RGB"))
        self.writer.add_image("samples/input|generated|target", pixels, trainer.step, dataformats="HWC")
        self.writer.flush()

    def on_end(self, trainer: Trainer) -> None:
        self.writer.close()


def _tag(key: str) -> str:
    """Losses in one TensorBoard section, metrics and bookkeeping in others."""
    if key.startswith(("G_", "D_")):
        return f"loss/{key}"
    if key in ("lr", "steps_per_s"):
        return f"train/{key}"
    return f"metric/{key}"
