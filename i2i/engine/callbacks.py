"""The events a run reports to its observers (console, report, TensorBoard, evaluation)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from i2i.engine.trainer import Trainer


class Callback:
    """Hooks into a run, called on the main process only. Override the events you need."""

    def on_step(self, trainer: Trainer) -> None:
        pass

    def on_log(self, trainer: Trainer, record: dict[str, Any]) -> None:
        pass

    def on_sample(self, trainer: Trainer, path: Path) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass
