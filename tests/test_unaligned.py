"""The unpaired datasets: ``unaligned`` (trainA/trainB folders) and ``unpaired_aligned``
(the halves of A|B files drawn independently). Images are solid colours where a test needs
to know which file a sample came from, and noise where it needs to see the crop."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from i2i.data.base import DataError, resize, to_tensor
from i2i.data.images import read_rgb
from i2i.data.unaligned import UnalignedDataset, UnpairedAlignedDataset, UnpairedParams
from i2i.recipe import DataSection
from i2i.registry import DATASETS

LOAD, CROP = 36, 32


def solid(path: Path, value: int, size: tuple[int, int] = (LOAD, LOAD)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def noise(path: Path, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (LOAD, LOAD, 3), dtype=np.uint8)).save(path)


def level(tensor: torch.Tensor) -> int:
    """The grey level of a solid-colour sample."""
    return round((tensor.mean().item() + 1) * 127.5)


def folders(root: Path, a: int = 3, b: int = 5, split: str = "train") -> Path:
    for i in range(a):
        solid(root / f"{split}A" / f"{i}_A.png", 10 + i)
    for j in range(b):
        suffix = "jpg" if j == 0 else "png"  # suffixes may mix
        solid(root / f"{split}B" / f"{j}_B.{suffix}", 100 + 10 * j)
    return root


def unaligned(root: Path, split: str = "train", train: bool = True, seed: int = 0, dataset: type = UnalignedDataset,
              **params) -> UnalignedDataset:
    data_params = {k: params.pop(k) for k in list(params) if k in DataSection.model_fields}
    data = DataSection(dataset={"name": "unaligned"}, root=root, load_size=LOAD, crop_size=CROP, **data_params)
    return dataset(UnpairedParams(**params), data=data, split=split, train=train, seed=seed)


def draws(dataset) -> list[tuple[int, int]]:
    return [(level(s["input"]), level(s["target"])) for s in (dataset[i] for i in range(len(dataset)))]


def test_registered_with_params():
    assert DATASETS.get("unaligned").obj is UnalignedDataset
    assert DATASETS.get("unpaired_aligned").obj is UnpairedAlignedDataset
    assert set(UnpairedParams.model_fields) == {"in_channels", "out_channels", "serial_b"}


def test_length_is_the_longer_side_and_a_cycles(tmp_path):
    dataset = unaligned(folders(tmp_path), serial_b=True)
    assert len(dataset) == 5 and (dataset.in_channels, dataset.out_channels) == (3, 3)
    assert draws(dataset) == [(10, 100), (11, 110), (12, 120), (10, 130), (11, 140)]
    sample = dataset[3]
    assert sample["input"].shape == sample["target"].shape == (3, CROP, CROP)
    assert sample["path"] == f"{tmp_path / 'trainA' / '0_A.png'} + {tmp_path / 'trainB' / '3_B.png'}"


def test_b_is_drawn_per_seed_epoch_and_sample(tmp_path):
    folders(tmp_path, a=2, b=6)
    dataset = unaligned(tmp_path)
    first = draws(dataset)
    assert [a for a, _ in first] == [10, 11, 10, 11, 10, 11]
    assert draws(unaligned(tmp_path)) == first, "the same seed and epoch draw the same B images"
    by_epoch = [first]
    for epoch in (1, 2, 3):
        dataset.set_epoch(epoch)
        by_epoch.append(draws(dataset))
    assert len({tuple(d) for d in by_epoch}) == 4, "each epoch draws anew"
    assert len({b for d in by_epoch for _, b in d}) >= 4, "B images come from the whole folder"
    assert draws(unaligned(tmp_path, seed=1)) != first


def test_evaluation_pairs_serially_as_the_reference_tests(tmp_path):
    folders(tmp_path, a=2, b=3, split="test")
    for split in ("val", "test"):
        assert draws(unaligned(tmp_path, split=split, train=False)) == [(10, 100), (11, 110), (10, 120)]


def test_a_and_b_are_cropped_and_flipped_independently(tmp_path):
    noise(tmp_path / "trainA" / "1.png")
    noise(tmp_path / "trainB" / "1.png")  # the same picture on both sides
    dataset = unaligned(tmp_path)
    differ = 0
    for epoch in range(8):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        differ += not torch.equal(sample["input"], sample["target"])
    assert differ >= 6, "a shared crop box would make both sides equal"
    evaluation = unaligned(tmp_path, split="train", train=False)[0]
    assert torch.equal(evaluation["input"], evaluation["target"]), "evaluation resizes both sides the same way"


def test_cache_gives_the_same_samples_as_the_files(tmp_path):
    for i in range(3):
        noise(tmp_path / "trainA" / f"{i}.png", seed=i)
        noise(tmp_path / "trainB" / f"{i}.png", seed=10 + i)
    cached, from_files = unaligned(tmp_path, cache="memory"), unaligned(tmp_path, cache="none")
    cached.prepare()
    from_files.prepare()
    assert cached.a.cache.shape == (3, LOAD, LOAD, 3) and from_files.a.cache is None
    for epoch in (0, 1):
        cached.set_epoch(epoch)
        from_files.set_epoch(epoch)
        for i in range(3):
            assert all(torch.equal(cached[i][k], from_files[i][k]) for k in ("input", "target"))


def test_decay_epochs_resize_to_decay_load_size_without_a_crop(tmp_path):
    """CUT's reference loader: from the first decay epoch on, resize to the crop size, no crop."""
    noise(tmp_path / "trainA" / "1.png")
    noise(tmp_path / "trainB" / "1.png", seed=1)
    dataset = unaligned(tmp_path, cache="memory", decay_load_size=CROP)
    dataset.prepare()
    dataset.start_decay_at(2)
    whole = to_tensor(resize(read_rgb(tmp_path / "trainA" / "1.png"), CROP))
    flips = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        sample = dataset[0]["input"]
        unflipped, flipped = torch.equal(sample, whole), torch.equal(sample, whole.flip(2))
        assert (unflipped or flipped) == (epoch >= 2), epoch
        if epoch >= 2:
            flips.add(flipped)
    assert flips == {False, True}, "the flip still applies"
    assert dataset.a.cache is None, "the cache at load_size is not resized a second time"
    dataset.set_epoch(0)
    assert not torch.equal(dataset[0]["input"], whole), "back before the decay: the random crop again"


def test_a_copy_at_another_epoch_leaves_the_original_as_it_was(tmp_path):
    import copy

    noise(tmp_path / "trainA" / "1.png")
    noise(tmp_path / "trainB" / "1.png", seed=1)
    dataset = unaligned(tmp_path, decay_load_size=CROP)
    dataset.start_decay_at(1)
    dataset.set_epoch(3)
    before = dataset[0]["input"]
    view = copy.copy(dataset)
    view.set_epoch(0)  # as precise BN's fixed batches do
    assert view.a.size == LOAD and dataset.a.size == CROP
    assert torch.equal(dataset[0]["input"], before)


def test_decay_load_size_is_checked_against_the_crop(tmp_path):
    with pytest.raises(ValueError, match="crop_size 32 is larger than decay_load_size 30"):
        unaligned(tmp_path, decay_load_size=30)


def test_direction_and_channels(tmp_path):
    folders(tmp_path, a=2, b=2)
    backwards = unaligned(tmp_path, direction="BtoA", serial_b=True, in_channels=1)
    assert (backwards.in_channels, backwards.out_channels) == (1, 3)
    sample = backwards[1]
    assert sample["input"].shape == (1, CROP, CROP) and level(sample["input"]) == 110  # B, as luma
    assert sample["target"].shape == (3, CROP, CROP) and level(sample["target"]) == 11
    assert sample["path"].startswith(str(tmp_path / "trainA"))


def test_bad_images_stop_or_are_skipped_per_side(tmp_path, caplog):
    folders(tmp_path, a=2, b=3)
    (tmp_path / "trainB" / "1_B.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"1_B.png: cannot decode image"):
        unaligned(tmp_path, cache="memory").prepare()
    dataset = unaligned(tmp_path, on_bad_image="skip", serial_b=True)
    with caplog.at_level(logging.WARNING, logger="i2i.data"):
        dataset.prepare()
    assert "skipped 1 of 3 trainB images" in caplog.text
    assert len(dataset) == 2 and draws(dataset) == [(10, 100), (11, 120)]


def test_missing_or_empty_folders_are_named(tmp_path):
    folders(tmp_path, a=1, b=0)
    with pytest.raises(DataError, match=r"image folder not found: .*trainB"):
        unaligned(tmp_path)
    (tmp_path / "trainB").mkdir()
    with pytest.raises(DataError, match=r"no images .* in .*trainB \(it is empty\)"):
        unaligned(tmp_path)


def write_aligned(root: Path, count: int, split: str = "train") -> None:
    """A|B files: image i has grey 10 + i on the left (A) and 100 + 10 i on the right (B)."""
    for i in range(count):
        ab = np.concatenate([np.full((LOAD, LOAD, 3), 10 + i, np.uint8), np.full((LOAD, LOAD, 3), 100 + 10 * i, np.uint8)], 1)
        (root / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(ab).save(root / split / f"{i + 1}.png")


def test_unpaired_aligned_draws_the_halves_independently(tmp_path):
    write_aligned(tmp_path, 5)
    dataset = unaligned(tmp_path, dataset=UnpairedAlignedDataset)
    assert len(dataset) == 5
    samples = draws(dataset)
    assert [a for a, _ in samples] == [10, 11, 12, 13, 14], "A: the left halves in order"
    assert {b for _, b in samples} <= {100, 110, 120, 130, 140}, "B: right halves"
    assert any(b != 100 + 10 * (a - 10) for a, b in samples), "B is drawn from other images"
    write_aligned(tmp_path, 2, split="val")
    assert draws(unaligned(tmp_path, split="val", train=False, dataset=UnpairedAlignedDataset)) == [(10, 100), (11, 110)]
    backwards = unaligned(tmp_path, dataset=UnpairedAlignedDataset, direction="BtoA", serial_b=True)
    assert draws(backwards)[:2] == [(100, 10), (110, 11)]


def test_unpaired_aligned_refuses_files_that_are_not_two_to_one(tmp_path):
    solid(tmp_path / "train" / "1.png", 0, (LOAD, LOAD))
    with pytest.raises(DataError, match=r"1.png: 36x36 is not 2:1"):
        unaligned(tmp_path, dataset=UnpairedAlignedDataset)[0]


def test_batches_through_a_dataloader(tmp_path):
    dataset = unaligned(folders(tmp_path))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch["input"].shape == batch["target"].shape == (4, 3, CROP, CROP) and len(batch["path"]) == 4


def test_loader_bench_reads_both_sides(tmp_path):
    from conftest import tiny_recipe
    from i2i.bench.loader import bench_loader
    from i2i.recipe import Recipe

    for i in range(3):
        noise(tmp_path / "trainA" / f"{i}.png", seed=i)
        noise(tmp_path / "trainB" / f"{i}.png", seed=10 + i)
    data = {"dataset": {"name": "unaligned"}, "root": str(tmp_path), "load_size": LOAD, "crop_size": CROP}
    recipe = tiny_recipe(data=data, method={"name": "cyclegan"}, losses=[{"name": "gan", "params": {"mode": "lsgan"}}])
    results = bench_loader(Recipe.from_dict(recipe, "test"), samples=4)
    assert results["cache_mb"] == 2 * 3 * LOAD * LOAD * 3 / 2**20
    assert "on_device_per_s" not in results, "the unpaired sides are not one array of pairs"
