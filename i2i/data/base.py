"""The pix2pix transform and the decode-once cache, around datasets of uint8 image pairs.

An ``ImagePairDataset`` (the ``PairedDataset`` contract of ``i2i.contracts``) yields
``{"input": CxHxW float in [-1, 1], "target": ..., "path": str}``. Subclasses implement
``__len__`` and ``load_pair(index)`` returning two uint8 HxWxC arrays (input, target) in the
orientation the recipe's direction asks for; this base class resizes them (PIL bicubic, as the
reference does), applies the same random crop and flip to both and normalises.

Randomness is seeded per (seed, epoch, index), so a sample's augmentation does
not depend on worker count, on where a resumed run restarts, or on whether the
crop runs here or on the training device (``i2i.data.device``).

``prepare()`` decodes every pair once into one uint8 array (the cache) and, under
``data.on_bad_image: skip``, drops the files that cannot be read.

All of this except the pairing lives in ``DecodedImages``, a set of images of
one kind, so that unpaired datasets (``i2i.data.unaligned``) run each of their
two sides through the same pipeline.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from i2i.contracts import PairedDataset
from i2i.errors import I2IError
from i2i.recipe import DataSection

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
# ``cache: auto`` keeps a training set in memory up to this size (maps at 286: 150 MB).
AUTO_CACHE_BYTES = 2 << 30

log = logging.getLogger("i2i.data")
Side = TypeVar("Side")


class DataError(I2IError):
    pass


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    entries = [p for p in folder.iterdir() if p.is_file()]
    files = sorted((p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if not files:
        others = sorted(p.name for p in entries)
        found = f"; it holds {len(others)} other file(s), such as {', '.join(others[:3])}" if others else " (it is empty)"
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}{found}")
    return files


def natural_key(path: Path) -> tuple:
    stem = path.stem
    return (0, int(stem), path.name) if stem.isdigit() else (1, 0, path.name)


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Square bicubic resize with PIL, as the reference implementation does."""
    if image.shape[0] == size and image.shape[1] == size:
        return image
    squeezed = image[..., 0] if image.shape[2] == 1 else image
    out = np.asarray(Image.fromarray(squeezed).resize((size, size), Image.BICUBIC))
    return out[..., None] if out.ndim == 2 else out


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWxC uint8 -> contiguous CxHxW float in [-1, 1]. In numpy on purpose: torch would split
    these small element-wise ops over its intra-op threads, which contend with training's."""
    out = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)
    out *= 1 / 127.5
    out -= 1
    return torch.from_numpy(out)


def sample_seed(seed: int, epoch: int, index: int, *stream: int) -> int:
    """The seed of sample ``index``'s randomness this epoch; ``stream`` tells independent draws apart."""
    return int(np.random.SeedSequence([seed, epoch, index, *stream]).generate_state(1)[0])


class DecodedImages(ABC):
    """Indexed uint8 images, each resized to a square ``size`` with ``channels`` channels
    (``stored``), decoded once into the cache by ``prepare``, randomly cropped and flipped
    per (seed, epoch, sample, ``stream``)."""

    channels: int
    stream: tuple[int, ...] = ()
    auto_cache_bytes = AUTO_CACHE_BYTES

    def __init__(self, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        self.data = data
        self.split = split
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.decay_start: int | None = None  # the first epoch at data.decay_load_size
        # Training resizes to load_size and crops; evaluation resizes straight to crop_size.
        self.size = data.load_size if train else data.crop_size
        self.crop = data.crop_size
        self.skipped: list[str] = []
        self.cache: np.ndarray | None = None  # N x size x size x channels, uint8

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        size = self.size_in(epoch)
        if size != self.size:
            # The cache holds the images at the old size; resizing those again would differ
            # from resizing the files, so from here each sample is decoded from its file.
            self.size, self.cache = size, None

    def start_decay_at(self, epoch: int) -> None:
        self.decay_start = epoch
        self.set_epoch(self.epoch)

    def size_in(self, epoch: int) -> int:
        """The side images are resized to in ``epoch``: training switches from load_size to
        decay_load_size where the learning rate starts to decay (CUT's reference loader)."""
        if not self.train:
            return self.crop
        decaying = self.decay_start is not None and epoch >= self.decay_start
        return self.data.decay_load_size if decaying and self.data.decay_load_size else self.data.load_size

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def stored(self, index: int) -> np.ndarray:
        """Image ``index`` decoded, checked and resized to ``size``: what the cache holds."""

    def describe(self, index: int) -> str:
        """Where sample ``index`` comes from (a file path for file datasets)."""
        return f"{type(self).__name__}[{index}]"

    def drop(self, indices: list[int]) -> None:
        """Remove samples that failed to load; only datasets of files can."""
        raise DataError(f"{type(self).__name__} cannot skip bad samples: {self.skipped[0]}")

    def checked(self, array: np.ndarray, channels: int, index: int, role: str) -> np.ndarray:
        """``array`` resized to ``size``, once it is a uint8 HxWx``channels`` image."""
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != channels:
            raise DataError(f"{self.describe(index)}: {role} is {array.dtype} {array.shape}, expected uint8 HxWx{channels}")
        return resize(array, self.size)

    # -- decoding ---------------------------------------------------------------
    def wants_cache(self) -> bool:
        mode = self.data.cache
        if self.data.on_device or mode == "memory":
            return True
        estimate = len(self) * self.size * self.size * self.channels
        return mode == "auto" and self.train and estimate <= self.auto_cache_bytes

    def prepare(self) -> None:
        """Decode every image once: fills the cache and applies ``on_bad_image``."""
        cache_wanted = self.wants_cache()
        skip = self.data.on_bad_image == "skip"
        if not (cache_wanted or skip) or self.cache is not None:
            return
        cache = np.empty((len(self), self.size, self.size, self.channels), np.uint8) if cache_wanted else None
        bad, kept = [], 0
        for index in range(len(self)):
            try:
                image = self.stored(index)
            except DataError as error:
                if not skip:
                    raise
                bad.append(index)
                self.skipped.append(str(error))
                continue
            if cache is not None:
                cache[kept] = image
            kept += 1
        if bad:
            for message in self.skipped:
                log.warning("skipped: %s", message)
            log.warning("on_bad_image=skip: skipped %d of %d %s images", len(bad), len(self), self.split)
            self.drop(bad)
        if kept == 0:
            raise DataError(f"every {self.split} sample failed to load; the first problem: {self.skipped[0]}")
        self.cache = cache[:kept] if cache is not None else None

    def cached_bytes(self) -> int:
        return 0 if self.cache is None else self.cache.nbytes

    # -- sampling ---------------------------------------------------------------
    def crop_box(self, index: int) -> tuple[int, int, bool, np.random.Generator]:
        """(top, left, flip) of sample ``index`` this epoch, and the generator for any later step."""
        rng = np.random.default_rng(sample_seed(self.seed, self.epoch, index, *self.stream))
        if not self.train:
            return 0, 0, False, rng
        room = self.size - self.crop
        top, left = (int(v) for v in rng.integers(0, room + 1, size=2))
        flip = bool(self.data.flip and rng.random() < 0.5)
        return top, left, flip, rng

    def cropped(self, index: int, sample: int) -> tuple[np.ndarray, np.random.Generator]:
        """Image ``index`` cropped and flipped as sample ``sample`` is this epoch, and the generator."""
        image = self.cache[index] if self.cache is not None else self.stored(index)
        top, left, flip, rng = self.crop_box(sample)
        view = image[top : top + self.crop, left : left + self.crop]
        return (view[:, ::-1] if flip else view), rng


class ImagePairDataset(DecodedImages, PairedDataset):
    """Pairs stacked on channels, input first: one crop and flip serve both."""

    def __init__(self, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(data, split, train, seed)
        self.device_copy = None  # an i2i.data.device.DeviceResidentSet, made on first use

    @property
    def channels(self) -> int:
        return self.in_channels + self.out_channels

    @abstractmethod
    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample ``index`` as two uint8 HxWxC arrays: (input, target)."""

    def finish(self, source: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A last per-sample step after the crop (``degrade`` builds its input here)."""
        return source, target

    def stored(self, index: int) -> np.ndarray:
        """Input and target resized and stacked on channels."""
        source, target = self.load_pair(index)
        source = self.checked(source, self.in_channels, index, "input")
        return np.concatenate([source, self.checked(target, self.out_channels, index, "target")], axis=2)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        view, rng = self.cropped(index, index)
        source, target = self.finish(view[..., : self.in_channels], view[..., self.in_channels :], rng)
        return {"input": to_tensor(source), "target": to_tensor(target), "path": self.describe(index)}


class FileList:
    """Decoded images whose samples are files (or pairs of files), in ``self.files``: their
    count, names and the dropping of unreadable ones (``on_bad_image: skip``)."""

    files: list

    def __len__(self) -> int:
        return len(self.files)

    def describe(self, index: int) -> str:
        return str(self.files[index])

    def drop(self, indices: list[int]) -> None:
        gone = set(indices)
        self.files = [f for i, f in enumerate(self.files) if i not in gone]


class FileDataset(FileList, ImagePairDataset):
    """A dataset whose samples are files (or pairs of files), in ``self.files``."""

    def orient(self, a: Side, b: Side) -> tuple[Side, Side]:
        """(input, target) from the A and B sides (images or channel counts), following ``data.direction``."""
        return (b, a) if self.data.direction == "BtoA" else (a, b)

    def set_channels(self, a: int, b: int) -> None:
        self.in_channels, self.out_channels = self.orient(a, b)
