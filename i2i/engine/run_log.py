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
