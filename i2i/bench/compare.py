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

Quality figures are also judged against their noise (``significance``): the newest
against the previous by a bootstrap over images where both records hold per-image
values, and two chosen sides (``compare_sides``: the records matching ``FIELD=PATTERN``
filters, one per training seed) by the seed rule and the bootstrap.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from i2i.bench.records import read_records
from i2i.bench.significance import Check, PerImage, bootstrap_checks, seed_check, verdict
from i2i.errors import I2IError

SPEED_SETUP = ("device_name", "threads", "recipe", "image_size", "batch_size", "infer_batch", "overrides", "batches")
QUALITY_SETUP = ("device_name", "recipe", "steps_trained", "data", "split", "limit", "mode")
LOWER_IS_BETTER = {"fid", "kid"}
QUALITY_METRICS = ("fid", "kid", "ssim", "psnr")
# What the records of one side must share (its seeds differ), and what both sides must.
SIDE_FIELDS = ("recipe", "mode", "data", "split", "limit", "direction")
SHARED_FIELDS = ("data", "split", "limit", "direction")


class CompareError(I2IError):
    pass


@dataclass(frozen=True)
class Change:
    setup: str
    figure: str
    previous: float
    latest: float
    higher_is_better: bool
    drift: bool = False  # previous is tuned's figure, latest default's, of one record
    noise: Check | None = None  # a quality figure's bootstrap over images, where both records allow it

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

    @property
    def verdict(self) -> str:
        return verdict(self.figure, [self.noise]) if self.noise else ""


def setup_of(record: dict[str, Any]) -> str:
    if record.get("kind") == "speed":
        settings = {name: config["settings"] for name, config in record["configs"].items()}  # asked for, not chosen
        fields = {key: record.get(key) for key in SPEED_SETUP} | {"settings": settings}
    else:
        # records from before --direction scored the run's own direction; from before the seed was
        # recorded, most likely the default seed
        fields = {key: record.get(key) for key in QUALITY_SETUP} | {"direction": record.get("direction", "AtoB"),
                                                                    "seed": record.get("seed", 0)}
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
            if key in QUALITY_METRICS and value is not None:
                found[key] = (value, key not in LOWER_IS_BETTER)
    return found


def latest_changes(records: list[dict[str, Any]], results_dir: Path | None = None, resamples: int = 0) -> list[Change]:
    """For every setup with two or more records: each figure of the newest against the previous;
    a quality figure with its bootstrap over images (``resamples`` draws) where both records
    have per-image values of the same images in ``results_dir``."""
    by_setup: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_setup.setdefault(setup_of(record), []).append(record)
    changes = []
    for history in by_setup.values():
        if len(history) < 2:
            continue
        previous, latest = figures(history[-2]), figures(history[-1])
        label = f"{history[-1].get('kind')} {history[-1].get('recipe')} on {history[-1].get('device_name')}"
        noise = {}
        if results_dir is not None and resamples and history[-1].get("kind") == "quality":
            values = per_image_values(history[-2:], results_dir)
            noise = bootstrap_checks(values[:1], values[1:], resamples) if values else {}
        for name, (value, higher) in latest.items():
            if name in previous:
                changes.append(Change(label, name, previous[name][0], value, higher, noise=noise.get(name)))
    return changes


def per_image_values(records: list[dict[str, Any]], results_dir: Path) -> list[PerImage] | None:
    """The records' per-image values, where every one has them and all scored the same images
    (the same real-image file); else None."""
    files = [record.get("per_image") for record in records]
    if not all(files) or len({f["real"] for f in files}) != 1:
        return None
    return [PerImage.load(results_dir / f["fake"], results_dir / f["real"]) for f in files]


def drifts(records: list[dict[str, Any]]) -> list[Change]:
    """For every speed setup: the newest record's default training rate against its tuned one."""
    newest = {setup_of(record): record for record in records if "default" in record.get("configs", {})}
    return [
        Change(f"speed {record.get('recipe')} on {record.get('device_name')}", "default vs tuned train steps/s",
               record["configs"]["tuned"]["train_steps_per_s"]["median"],
               record["configs"]["default"]["train_steps_per_s"]["median"], True, drift=True)
        for record in newest.values()
    ]


def compare_results(results_dir: Path, resamples: int = 0) -> list[Change]:
    speed = read_records(results_dir / "speed.jsonl")
    quality = [record for record in read_records(results_dir / "quality.jsonl") if record.get("kind") == "quality"]
    return latest_changes(speed + quality, results_dir, resamples) + drifts(speed)


# ------------------------------------------------------------------ two chosen sides
@dataclass(frozen=True)
class SideFigure:
    """One metric of two sides: each side's figure per seed, and the checks of B against A."""

    metric: str
    a: list[float]
    b: list[float]
    checks: list[Check] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return verdict(self.metric, self.checks)


@dataclass(frozen=True)
class SideComparison:
    a: list[dict[str, Any]]  # the records of side A, one per seed
    b: list[dict[str, Any]]
    figures: list[SideFigure]
    notes: list[str]  # why a check could not be made


def matches(record: dict[str, Any], filters: list[str]) -> bool:
    """Every ``FIELD=PATTERN`` (a shell pattern, against the field as text) holds for ``record``."""
    for text in filters:
        key, _, pattern = text.partition("=")
        if not fnmatch.fnmatchcase(str(record.get(key.strip())), pattern.strip()):
            return False
    return True


def select_side(records: list[dict[str, Any]], filters: list[str], side: str) -> list[dict[str, Any]]:
    """The newest quality record of each training seed among those matching every filter; their
    ``SIDE_FIELDS`` must agree (a side is one recipe's result, over seeds)."""
    if not filters or any("=" not in text for text in filters):
        raise CompareError(f"--{side}: give FIELD=PATTERN filters, such as --{side} recipe=pix2pix_maps, got {filters}")
    newest = {record.get("seed", 0): record for record in records if matches(record, filters)}
    if not newest:
        raise CompareError(f"--{side} {' '.join(filters)}: no quality record matches")
    for key in SIDE_FIELDS:
        values = sorted({str(record.get(key)) for record in newest.values()})
        if len(values) > 1:
            raise CompareError(f"--{side} {' '.join(filters)}: the records differ in {key} ({', '.join(values)}); "
                               f"narrow it, e.g. --{side} {key}={values[0]}")
    return [newest[seed] for seed in sorted(newest)]


def compare_sides(results_dir: Path, a_filters: list[str], b_filters: list[str], resamples: int) -> SideComparison:
    """Side B against side A, per metric: the seed rule where each side has two or more seeds, the
    bootstrap over images where every record has per-image values of the same images."""
    records = [record for record in read_records(results_dir / "quality.jsonl") if record.get("kind") == "quality"]
    a, b = select_side(records, a_filters, "a"), select_side(records, b_filters, "b")
    for key in SHARED_FIELDS:
        if a[0].get(key) != b[0].get(key):
            raise CompareError(f"the sides scored different images: {key} {a[0].get(key)} against {b[0].get(key)}")
    notes = []
    if min(len(a), len(b)) < 2:
        notes.append(f"no seed check: {len(a)} and {len(b)} seed(s); it needs two or more a side")
    images: dict[str, Check] = {}
    if resamples:
        values = per_image_values(a + b, results_dir)
        if values is None:
            notes.append("no bootstrap over images: not every record has per-image values of the same images "
                         "(i2i bench quality writes them; records from before it do not)")
        else:
            images = bootstrap_checks(values[: len(a)], values[len(a):], resamples)
    found = []
    for metric in QUALITY_METRICS:
        a_values, b_values = ([record["metrics"].get(metric) for record in side] for side in (a, b))
        if None in a_values + b_values:
            continue
        checks = [check for check in (seed_check(a_values, b_values), images.get(metric)) if check is not None]
        found.append(SideFigure(metric, a_values, b_values, checks))
    return SideComparison(a, b, found, notes)
