"""TensorBoard logging: every logged number as a scalar, every sample grid as an image.

``tensorboard --logdir runs`` then compares runs side by side.

A resumed run redoes the steps after its checkpoint. Its event file starts with a purge at the
first step it records (``SummaryWriter(purge_step=...)``): TensorBoard then hides the earlier
events of that step and later ones, so a viewer sees one value per step, as ``log.jsonl`` keeps
one record per step. The earlier events stay in their file; only viewers that honour the purge
(TensorBoard does) hide them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from i2i.engine.callbacks import Callback
from i2i.engine.run_log import is_loss
from i2i.engine.trainer import Trainer
from i2i.errors import I2IError
from i2i.safe_files import own_folder

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
        self.make_writer = SummaryWriter
        self.writer = None  # made at the first event, whose step is where a resumed run starts again

    def writer_at(self, step: int):
        if self.writer is None:
            self.writer = self.make_writer(str(own_folder(self.log_dir)), purge_step=step)
        return self.writer

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        step = int(record.get("step", trainer.step))
        writer = self.writer_at(step)
        for key, value in record.items():
            if key not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                writer.add_scalar(_tag(key), value, step)

    def on_sample(self, trainer: Trainer, path: Path) -> None:
        with Image.open(path) as grid:
            pixels = np.asarray(grid.convert("RGB"))
        writer = self.writer_at(trainer.step)
        writer.add_image("samples/input|generated|target", pixels, trainer.step, dataformats="HWC")
        writer.flush()

    def on_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()


def _tag(key: str) -> str:
    """Losses in one TensorBoard section, metrics and bookkeeping in others."""
    if is_loss(key):
        return f"loss/{key}"
    if key in ("lr", "steps_per_s"):
        return f"train/{key}"
    return f"metric/{key}"
