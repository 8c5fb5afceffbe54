"""A run's ``log.jsonl``: one JSON record per line, appended by the trainer, cut back on resume.

A resumed run redoes the steps after its checkpoint, so the records of those steps are
dropped first: readers (``i2i report``, the Hub's model card) then see one record per step
without knowing about resumes.
"""

from __future__ import annotations

import json
from pathlib import Path

from i2i.safe_files import write_file

LOG = "log.jsonl"
# Bookkeeping fields of a log record (``eval_images``, ``eval_mode``: the size of the evaluation
# set of train.eval_every and the generator's mode); every other number is a loss or a metric.
BOOKKEEPING = {"step", "epoch", "lr", "steps_per_s", "eval_images", "eval_mode"}
METRIC_PREFIX = "eval_"  # the figures of train.eval_every (eval_fid, ...)
COUNTS = {"skipped_steps"}  # train.on_nonfinite skip's count: plotted with the metrics, no loss


def is_loss(key: str) -> bool:
    """A loss term: any number a training step returns, whatever the method names it (G_*, D_*,
    CycleGAN's cycle_* and idt_*, CUT's NCE), as opposed to bookkeeping, counts and metrics."""
    return key not in BOOKKEEPING and key not in COUNTS and not key.startswith(METRIC_PREFIX)


def truncate_log(run_dir: Path, step: int) -> int:
    """Drop the records of ``log.jsonl`` past ``step`` (the resumed run writes them again), and a
    line half-written by a killed run; returns how many lines were dropped."""
    path = Path(run_dir) / LOG
    if not path.is_file():
        return 0
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not (isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] > step):
            kept.append(line)
    dropped = len(lines) - len(kept)
    if dropped:
        write_file(path, "".join(line + "\n" for line in kept))
    return dropped
