"""Benchmark records: one JSON object per line, with what is needed to compare them later."""

from __future__ import annotations

import datetime
import json
import math
import subprocess
from pathlib import Path
from typing import Any, Iterator

import torch

from i2i.engine.autotune import cpu_model, device_name
from i2i.errors import I2IError
from i2i.safe_files import append_text
from i2i.version import __version__


def git_commit() -> str:
    """The commit of the i2i checkout, with "+dirty" when its tracked files have changes."""
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "-uno"], cwd=repo, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "i2i": __version__,
        "git_commit": git_commit(),
    }


def _finite(value: Any) -> Any:
    """JSON has no inf/nan: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def append_record(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    append_text(path, json.dumps(_finite(record), allow_nan=False) + "\n")


NOT_JSON = object()  # a line json_lines cannot parse (a line reading "null" is None)


def json_lines(lines: list[str]) -> Iterator[tuple[int, Any]]:
    """Each non-blank line's number (from 1) and parsed value, or ``NOT_JSON``."""
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                yield number, json.loads(line)
            except ValueError:  # bad JSON, or a number too long to convert
                yield number, NOT_JSON


def read_records(path: Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of a records file, one a line. Another line (bad JSON, a number, a list)
    is described in ``skipped`` and passed over; without ``skipped`` it is an error naming it."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as error:
        if skipped is None:
            raise I2IError(f"cannot read {path}: {error.strerror or error}") from None
        skipped.append(f"{path}: cannot be read ({error.strerror or error})")
        return []
    records = []
    for number, record in json_lines(lines):
        if isinstance(record, dict):
            records.append(record)
        elif skipped is None:
            raise I2IError(f"{path}:{number}: not a JSON record; fix or remove that line")
        else:
            skipped.append(f"{path}:{number}: not a JSON record")
    return records
