"""Unpaired datasets: A and B images drawn independently, for CycleGAN and CUT.

``unaligned`` reads the CycleGAN reference's layout::

    root/trainA/*.jpg   root/trainB/*.jpg      split "train"
    root/testA/...      root/testB/...         splits "val" and "test"

``unpaired_aligned`` reads a pix2pix A|B folder (``root/<split>/*.jpg``, as the
maps set) and uses its left halves as the A set and its right halves as the B
set, so a paired set trains an unpaired method as the CycleGAN paper did on maps.

As in the reference's ``UnalignedDataset``, a set has max(len A, len B) samples;
sample i takes A image i % len(A) and, in training, a B image drawn at random for
(seed, epoch, i), so a resumed run sees the same samples. ``serial_b`` (and every
evaluation, as the reference's test does) takes B image i % len(B) instead; for
``unpaired_aligned`` that is image i's own B half, the true pair. Each side is
resized, cropped and flipped on its own (``i2i.data.base.DecodedImages``: the same
decode-once cache and ``on_bad_image`` policy as the paired datasets).
``direction: BtoA`` makes B the input; ``in_channels`` and ``out_channels`` are
the input's and the target's (1: ITU-R 601 luma).
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from functools import partial
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field

from i2i.contracts import PairedDataset, Params
from i2i.data.aligned import split_halves
from i2i.data.base import AUTO_CACHE_BYTES, DecodedImages, FileList, list_images, sample_seed, to_tensor
from i2i.data.images import read_rgb
from i2i.recipe import DataSection
from i2i.registry import DATASETS

Reader = Callable[[Path], np.ndarray]
Side = tuple[list[Path], Reader, str]
# Independent random streams of one sample: A's crop, B's crop, the draw of B.
A_STREAM, B_STREAM, DRAW_STREAM = 1, 2, 3


class UnpairedParams(Params):
    in_channels: Literal[1, 3] = Field(3, description="channels of the input images (1: gray)")
    out_channels: Literal[1, 3] = Field(3, description="channels of the target images (1: gray)")
    serial_b: bool = Field(False, description="B image i % len(B) for sample i, not a random one (deterministic tests)")


class ImageFiles(FileList, DecodedImages):
    """One side of an unpaired set: image files read by ``read`` and made ``channels`` deep."""

    def __init__(self, files: list[Path], read: Reader, channels: int, label: str, stream: int,
                 data: DataSection, train: bool, seed: int):
        super().__init__(data, label, train, seed)
        self.files, self.read, self.channels, self.stream = files, read, channels, (stream,)
        self.auto_cache_bytes = AUTO_CACHE_BYTES // 2  # the two sides share the budget

    def stored(self, index: int) -> np.ndarray:
        image = self.read(self.files[index])
        if self.channels == 1:
            image = np.asarray(Image.fromarray(image).convert("L"))[..., None]  # as the reference's grayscale
        return self.checked(image, self.channels, index, "image")


class UnpairedDataset(PairedDataset):
    """A and B from two ``ImageFiles`` sides; subclasses say where the sides' files are."""

    pairs = False  # a training sample's B is drawn apart from its A

    def __init__(self, params: UnpairedParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        self.params, self.train, self.seed, self.epoch = params, train, seed, 0
        self.backwards = data.direction == "BtoA"
        self.in_channels, self.out_channels = params.in_channels, params.out_channels
        a_channels, b_channels = (self.out_channels, self.in_channels) if self.backwards else (self.in_channels, self.out_channels)
        (a_files, read_a, a_label), (b_files, read_b, b_label) = self.sides(data, split)
        self.a = ImageFiles(a_files, read_a, a_channels, a_label, A_STREAM, data, train, seed)
        self.b = ImageFiles(b_files, read_b, b_channels, b_label, B_STREAM, data, train, seed)

    @abstractmethod
    def sides(self, data: DataSection, split: str) -> tuple[Side, Side]:
        """(files, reader, name in messages) of the A side and of the B side."""

    def __len__(self) -> int:
        return max(len(self.a), len(self.b))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.a.set_epoch(epoch)
        self.b.set_epoch(epoch)

    def start_decay_at(self, epoch: int) -> None:
        self.a.start_decay_at(epoch)
        self.b.start_decay_at(epoch)

    def __copy__(self) -> UnpairedDataset:
        # A copy sets its own epoch (precise BN's view of epoch 0): its sides, which hold the
        # epoch and the image size, must be its own too; the decoded images stay shared.
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.a, clone.b = copy.copy(self.a), copy.copy(self.b)
        return clone

    def prepare(self) -> None:
        self.a.prepare()
        self.b.prepare()

    def cached_bytes(self) -> int:
        return self.a.cached_bytes() + self.b.cached_bytes()

    def unpaired_sizes(self) -> tuple[int, int] | None:
        return (len(self.b), len(self.a)) if self.backwards else (len(self.a), len(self.b))

    def b_index(self, index: int) -> int:
        if self.params.serial_b or not self.train:
            return index % len(self.b)
        return int(np.random.default_rng(sample_seed(self.seed, self.epoch, index, DRAW_STREAM)).integers(len(self.b)))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        a_index, b_index = index % len(self.a), self.b_index(index)
        a, _ = self.a.cropped(a_index, index)
        b, _ = self.b.cropped(b_index, index)
        source, target = (b, a) if self.backwards else (a, b)
        return {"input": to_tensor(source), "target": to_tensor(target),
                "path": f"{self.a.describe(a_index)} + {self.b.describe(b_index)}"}


def split_folder(split: str) -> str:
    """The reference's folder prefix for a split: its sets have train and test only."""
    return "train" if split == "train" else "test"


@DATASETS.register("unaligned", params=UnpairedParams)
class UnalignedDataset(UnpairedDataset):
    def sides(self, data: DataSection, split: str) -> tuple[Side, Side]:
        a, b = (f"{split_folder(split)}{side}" for side in "AB")
        return (list_images(data.root / a), read_rgb, a), (list_images(data.root / b), read_rgb, b)


def read_half(path: Path, half: Literal["left", "right"]) -> np.ndarray:
    left, right = split_halves(read_rgb(path), path)
    return left if half == "left" else right


@DATASETS.register("unpaired_aligned", params=UnpairedParams)
class UnpairedAlignedDataset(UnpairedDataset):
    def sides(self, data: DataSection, split: str) -> tuple[Side, Side]:
        files = list_images(data.root / split)
        return (
            (files, partial(read_half, half="left"), f"{split} left-half"),
            (list(files), partial(read_half, half="right"), f"{split} right-half"),
        )

    def unpaired_sizes(self) -> None:
        return None  # evaluation takes image i's own other half: the true pair
