"""``cyclegan_folders``: paired images in the CycleGAN folder layout.

::

    root/trainA/1_A.jpg   root/trainB/1_B.jpg
    root/testA/...        root/testB/...      (valA/valB are used for "val" when present)

CycleGAN's download script ships paired sets (maps, facades, cityscapes) this
way. A and B images pair by file name once ``a_suffix`` / ``b_suffix`` are
removed from the names (``1_A.jpg`` pairs with ``1_B.jpg``; without the
suffixes ``12.png`` pairs with ``12.jpg``). Every name without a partner is
reported.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from i2i.contracts import Params
from i2i.data.base import DataError, list_images, natural_key
from i2i.data.paired_folders import FilePairsDataset
from i2i.recipe import DataSection
from i2i.registry import DATASETS

SHOWN = 10  # names listed in an error


class CycleGANFoldersParams(Params):
    a_suffix: str = Field("_A", description="removed from the end of A file names before pairing")
    b_suffix: str = Field("_B", description="removed from the end of B file names before pairing")


def split_folder(root: Path, split: str) -> str:
    """``train`` -> ``train``; ``val`` -> ``val`` if root/valA exists, else ``test`` (CycleGAN has no val)."""
    if split == "val" and not (root / "valA").is_dir():
        return "test"
    return split


def by_name(folder: Path, suffix: str) -> dict[str, Path]:
    images = list_images(folder)
    named = {path.stem.removesuffix(suffix): path for path in images}
    if len(named) < len(images):
        raise DataError(f"{folder}: several images share a name once '{suffix}' and the extension are removed")
    return named


def pair_by_name(folder_a: Path, folder_b: Path, a_suffix: str, b_suffix: str) -> list[tuple[Path, Path]]:
    a, b = by_name(folder_a, a_suffix), by_name(folder_b, b_suffix)
    unpaired = sorted(a.keys() ^ b.keys())
    if unpaired:
        more = f" and {len(unpaired) - SHOWN} more" if len(unpaired) > SHOWN else ""
        raise DataError(
            f"{len(unpaired)} image name(s) in only one of {folder_a} and {folder_b}: "
            f"{', '.join(unpaired[:SHOWN])}{more} (names are compared without '{a_suffix}' / '{b_suffix}')"
        )
    return [(a[name], b[name]) for name in sorted(a, key=lambda name: natural_key(Path(name)))]


@DATASETS.register("cyclegan_folders", params=CycleGANFoldersParams)
class CycleGANFoldersDataset(FilePairsDataset):
    def __init__(
        self, params: CycleGANFoldersParams, data: DataSection, split: str = "train", train: bool = True, seed: int = 0
    ):
        super().__init__(data, split, train, seed)
        prefix = data.root / split_folder(data.root, split)
        self.files = pair_by_name(Path(f"{prefix}A"), Path(f"{prefix}B"), params.a_suffix, params.b_suffix)
