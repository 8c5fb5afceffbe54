"""``paired_folders``: ``root/<split>/A/`` and ``root/<split>/B/``, pairs matched by file name.

Names are matched without their suffix, so ``A/12.png`` pairs with ``B/12.jpg``.
Every name without a partner is listed in the error, as are ambiguous names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from i2i.contracts import Params
from i2i.data.base import DataError, FileDataset, list_images, natural_key
from i2i.data.images import read_rgb
from i2i.recipe import DataSection
from i2i.registry import DATASETS

SHOWN = 10  # names listed per problem in an error


class PairedFoldersParams(Params):
    a: str = Field("A", description="sub-folder of root/<split> holding the A images")
    b: str = Field("B", description="sub-folder of root/<split> holding the B images")


def _by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, list[Path]] = {}
    for path in list_images(folder):
        found.setdefault(path.stem, []).append(path)
    clashes = [names for names in found.values() if len(names) > 1]
    if clashes:
        shown = "; ".join(" / ".join(p.name for p in names) for names in clashes[:SHOWN])
        raise DataError(f"{folder}: {len(clashes)} name(s) used by more than one image: {shown}")
    return {stem: paths[0] for stem, paths in found.items()}


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def match_pairs(folder_a: Path, folder_b: Path) -> list[tuple[Path, Path]]:
    a, b = _by_stem(folder_a), _by_stem(folder_b)
    only_a, only_b = sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())
    if only_a or only_b:
        problems = []
        if only_a:
            problems.append(f"{len(only_a)} only in {folder_a}: {_listing(only_a)}")
        if only_b:
            problems.append(f"{len(only_b)} only in {folder_b}: {_listing(only_b)}")
        raise DataError("unmatched images (pairs are matched by file name without suffix):\n  " + "\n  ".join(problems))
    return [(a[stem], b[stem]) for stem in sorted(a, key=lambda stem: natural_key(a[stem]))]


class FilePairsDataset(FileDataset):
    """Samples are (A file, B file) pairs in ``self.files``; subclasses only find the pairs."""

    def describe(self, index: int) -> str:
        a, b = self.files[index]
        return f"{a} + {b}"

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.files[index]
        return self.orient(read_rgb(a), read_rgb(b))


@DATASETS.register("paired_folders", params=PairedFoldersParams)
class PairedFoldersDataset(FilePairsDataset):
    def __init__(self, params: PairedFoldersParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0):
        super().__init__(data, split, train, seed)
        self.files = match_pairs(data.root / split / params.a, data.root / split / params.b)
