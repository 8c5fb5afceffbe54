"""``i2i bench compare``: the newest result of each setup against the one before it,
and the newest speed record's ``default`` against its ``tuned``.

Two records share a setup when they ran on the same device (and thread count)
with the same recipe and configuration: for speed the image and batch sizes,
overrides, batch source and the settings each configuration asked for; for quality
the checkpoint's recipe and steps, the data, split, image count and generator mode.
A figure that got worse by more than ``threshold`` (relative) is a regression; for
speed the figures are the median rates, their fractions of the matmul peak timed in
the same run and of the roofline bound. In
one speed record, ``default`` (what ``i2i run`` chooses) and ``tuned`` (the engine's
static choice) training more than ``threshold`` apart, either way, is a drift.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from i2i.bench.records import read_records

SPEED_SETUP = ("device_name", "threads", "recipe", "image_size", "batch_size", "infer_batch", "overrides", "batches")
QUALITY_SETUP = ("device_name", "recipe", "steps_trained", "data", "split", "limit", "mode")
LOWER_IS_BETTER = {"fid", "kid"}


@dataclass(frozen=True)
class Change:
    setup: str
    figure: str
    previous: float
    latest: float
    higher_is_better: bool
    drift: bool = False  # previous is tuned's figure, latest default's, of one record

    @property
    def relative(self) -> float:
        """Positive when the figure got better."""
        if self.previous == 0:
            return 0.0
        change = (self.latest - self.previous) / abs(self.previous)
        return change if self.higher_is_better else -change

    def is_regression(self, threshold: float) -> bool:
        if self.drift:
            return abs(self.relative) > threshold
        return self.relative < -threshold

    @property
    def flag(self) -> str:
        return "DRIFT" if self.drift else "REGRESSION"


def setup_of(record: dict[str, Any]) -> str:
    if record.get("kind") == "speed":
        settings = {name: config["settings"] for name, config in record["configs"].items()}  # asked for, not chosen
        fields = {key: record.get(key) for key in SPEED_SETUP} | {"settings": settings}
    else:
        # records from before --direction scored the run's own direction
        fields = {key: record.get(key) for key in QUALITY_SETUP} | {"direction": record.get("direction", "AtoB")}
    return json.dumps({"kind": record.get("kind"), **fields}, sort_keys=True)


def figures(record: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """Figure name -> (value, higher is better)."""
    found = {}
    if record.get("kind") == "speed":
        for name, config in record["configs"].items():
            found[f"{name} train steps/s"] = (config["train_steps_per_s"]["median"], True)
            for key, rate in config.get("inference_images_per_s", {}).items():
                found[f"{name} inference {key} images/s"] = (rate["median"], True)
            if "train_fraction_of_peak" in config:  # records before issue 21 have no peak
                found[f"{name} train fraction of peak"] = (config["train_fraction_of_peak"], True)
            for key, fraction in config.get("inference_fraction_of_peak", {}).items():
                found[f"{name} inference {key} fraction of peak"] = (fraction, True)
            if "train_fraction_of_bound" in config:  # records before issue 32 have no roofline
                found[f"{name} train fraction of bound"] = (config["train_fraction_of_bound"], True)
            for key, fraction in config.get("inference_fraction_of_bound", {}).items():
                found[f"{name} inference {key} fraction of bound"] = (fraction, True)
    else:
        for key, value in record["metrics"].items():
            if key in ("fid", "kid", "ssim", "psnr") and value is not None:
                found[key] = (value, key not in LOWER_IS_BETTER)
    return found


def latest_changes(records: list[dict[str, Any]]) -> list[Change]:
    """For every setup with two or more records: each figure of the newest against the previous."""
    by_setup: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_setup.setdefault(setup_of(record), []).append(record)
    changes = []
    for history in by_setup.values():
        if len(history) < 2:
            continue
        previous, latest = figures(history[-2]), figures(history[-1])
        label = f"{history[-1].get('kind')} {history[-1].get('recipe')} on {history[-1].get('device_name')}"
        for name, (value, higher) in latest.items():
            if name in previous:
                changes.append(Change(label, name, previous[name][0], value, higher))
    return changes


def drifts(records: list[dict[str, Any]]) -> list[Change]:
    """For every speed setup: the newest record's default training rate against its tuned one."""
    newest = {setup_of(record): record for record in records if "default" in record.get("configs", {})}
    return [
        Change(f"speed {record.get('recipe')} on {record.get('device_name')}", "default vs tuned train steps/s",
               record["configs"]["tuned"]["train_steps_per_s"]["median"],
               record["configs"]["default"]["train_steps_per_s"]["median"], True, drift=True)
        for record in newest.values()
    ]


def compare_results(results_dir: Path) -> list[Change]:
    speed = read_records(results_dir / "speed.jsonl")
    quality = [record for record in read_records(results_dir / "quality.jsonl") if record.get("kind") == "quality"]
    return latest_changes(speed + quality) + drifts(speed)
