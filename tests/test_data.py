"""Datasets, image decoding, bad input, the decode-once cache and on-device batches (tiny images)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_recipe, write_fake_photos
from i2i.data.base import DataError
from i2i.data.degrade import bicubic
from i2i.data.device import DeviceResidentSet
from i2i.data.images import read_rgb
from i2i.engine.trainer import Trainer
from i2i.recipe import DataSection, Recipe
from i2i.registry import DATASETS


def make(name: str, root, params: dict | None = None, train: bool = True, **data) -> object:
    section = DataSection(dataset={"name": name}, root=root, load_size=36, crop_size=32, **data)
    return DATASETS.build(name, params or {}, data=section, split="train", train=train, seed=7)


def batch_of(dataset, indices) -> dict[str, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return {key: torch.stack([item[key] for item in items]) for key in ("input", "target")}


# -- decoding: every pixel format explicitly --------------------------------------
def test_gray_rgba_16bit_cmyk_palette_decode_to_the_right_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 90, np.uint8)).save(tmp_path / "gray.png")
    assert (read_rgb(tmp_path / "gray.png") == 90).all()

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)  # colour hidden under alpha 0 must not show
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = read_rgb(tmp_path / "alpha.png")
    assert out[0, 0].tolist() == [10, 200, 30] and out[1, 1].tolist() == [255, 255, 255]

    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "deep.png")
    assert read_rgb(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 128, 255]

    colour = np.zeros((8, 8, 3), np.uint8) + np.array([200, 40, 90], np.uint8)
    Image.fromarray(colour).convert("CMYK").save(tmp_path / "print.jpg", quality=100)
    assert np.abs(read_rgb(tmp_path / "print.jpg").astype(int) - colour).max() <= 6

    palette = Image.fromarray(np.array([[0, 1]], np.uint8), "P")
    palette.putpalette([250, 0, 0, 0, 0, 250])
    palette.info["transparency"] = 1
    palette.save(tmp_path / "palette.png", transparency=1)
    assert read_rgb(tmp_path / "palette.png")[0].tolist() == [[250, 0, 0], [255, 255, 255]]


def _truncated(folder):
    path = write_fake_photos(folder, 1, (80, 40))[0]
    path.write_bytes(path.read_bytes()[:300])
    return path.name, "cannot decode"


def _not_an_image(folder):
    folder.mkdir(parents=True)
    (folder / "1.jpg").write_text("not a jpeg")
    return "1.jpg", "cannot decode"


def _not_two_to_one(folder):
    write_fake_photos(folder, 1, (60, 40))
    return "1.jpg", "60x40 is not 2:1"


def _float_tiff(folder):
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((40, 80), np.float32)).save(folder / "1.tif")
    return "1.tif", "mode F"


@pytest.mark.parametrize("make_bad", [_truncated, _not_an_image, _not_two_to_one, _float_tiff],
                         ids=["truncated", "not-an-image", "not-2to1", "float"])
def test_bad_image_error_names_file_and_problem(tmp_path, make_bad):
    name, problem = make_bad(tmp_path / "train")
    dataset = make("aligned", tmp_path)
    with pytest.raises(DataError) as error:
        dataset.prepare()
    assert name in str(error.value) and problem in str(error.value)


def test_empty_folder_and_folder_of_non_images(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="it is empty"):
        make("aligned", tmp_path)
    (tmp_path / "train" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="1 other file.*notes.txt"):
        make("aligned", tmp_path)


def test_skip_policy_drops_and_counts_bad_images(tmp_path, caplog):
    write_fake_photos(tmp_path / "train", 3, (80, 40))
    (tmp_path / "train" / "7.jpg").write_text("not a jpeg")
    write_fake_photos(tmp_path / "odd", 1, (60, 40))[0].rename(tmp_path / "train" / "8.jpg")
    dataset = make("aligned", tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="i2i.data"):
        dataset.prepare()
    assert len(dataset) == 3 and dataset.cache.shape[0] == 3
    assert [m.split(":")[0].rsplit("/", 1)[1] for m in dataset.skipped] == ["7.jpg", "8.jpg"]
    assert "skipped 2 of 5 train images" in caplog.text
    assert dataset[2]["input"].shape == (3, 32, 32)


# -- the cache and the device path give the same samples --------------------------
def test_cache_and_on_device_batches_equal_the_file_path(fake_data_root):
    from_files = make("aligned", fake_data_root, cache="none", direction="BtoA")
    cached = make("aligned", fake_data_root, cache="memory", direction="BtoA")
    cached.prepare()
    from_files.prepare()
    assert cached.cache is not None and from_files.cache is None
    for dataset in (cached, from_files):
        dataset.set_epoch(3)
    expected = batch_of(from_files, [2, 0, 3])
    assert torch.equal(batch_of(cached, [2, 0, 3])["input"], expected["input"])
    on_device = DeviceResidentSet(cached, torch.device("cpu")).batch([2, 0, 3])
    assert torch.equal(on_device["input"], expected["input"]) and torch.equal(on_device["target"], expected["target"])


def test_on_device_training_runs_and_degrade_refuses_it(fake_data_root, tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(data={"on_device": True}, train={**tiny_recipe()["train"], "max_steps": 2, "batch_size": 3}))
    trainer = Trainer(recipe, run_dir=tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2 and trainer.dataset.device_copy is not None
    degrade = make("degrade", fake_data_root, on_device=True)
    with pytest.raises(DataError, match="on_device"):
        DeviceResidentSet(degrade, torch.device("cpu"))


# -- datasets -------------------------------------------------------------------
def test_paired_folders_match_by_name_and_list_mismatches(tmp_path):
    write_fake_photos(tmp_path / "train" / "A", 3, (40, 40))
    write_fake_photos(tmp_path / "train" / "B", 3, (40, 40), seed=5)
    Image.open(tmp_path / "train" / "B" / "2.jpg").save(tmp_path / "train" / "B" / "2.png")
    (tmp_path / "train" / "B" / "2.jpg").unlink()
    dataset = make("paired_folders", tmp_path)
    assert [(a.name, b.name) for a, b in dataset.files] == [("1.jpg", "1.jpg"), ("2.jpg", "2.png"), ("3.jpg", "3.jpg")]
    (tmp_path / "train" / "A" / "3.jpg").rename(tmp_path / "train" / "A" / "9.jpg")
    with pytest.raises(DataError) as error:
        make("paired_folders", tmp_path)
    assert "1 only in" in str(error.value) and "9" in str(error.value) and "3" in str(error.value)


def test_colorization_and_edges_have_one_channel_input(fake_data_root):
    color = make("colorization", fake_data_root, train=False)
    assert (color.in_channels, color.out_channels) == (1, 3)
    sample = color[0]
    luma = (sample["target"] * torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0)
    assert sample["input"].shape == (1, 32, 32) and (sample["input"][0] - luma).abs().mean() < 0.05

    edges = make("edges", fake_data_root, {"low": 10, "high": 30})
    sample = edges[1]
    assert sample["input"].shape == (1, 32, 32) and set(sample["input"].unique().tolist()) <= {-1.0, 1.0}
    assert (sample["input"] < 0).any(), "a photo with colour blobs has some edges"


def test_degrade_input_is_the_bicubic_round_trip_of_the_target_crop(fake_data_root):
    dataset = make("degrade", fake_data_root, {"scale": 4, "side": "left"})
    sample = dataset[1]
    target = ((sample["target"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    expected = bicubic(bicubic(target, 8), 32)
    got = ((sample["input"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert np.abs(got.astype(int) - expected).max() <= 1

    noisy = make("degrade", fake_data_root, {"scale": 2, "noise_std": 5, "jpeg_quality": 60, "blur_sigma": 1.0})
    assert torch.equal(noisy[0]["input"], noisy[0]["input"]), "degradation is seeded per sample"
    noisy.set_epoch(1)
    first = noisy[0]["input"]
    noisy.set_epoch(2)
    assert not torch.equal(first, noisy[0]["input"])
    with pytest.raises(DataError, match="crop_size 28 is not a multiple of .*scale 8"):
        DATASETS.build("degrade", {"scale": 8}, data=DataSection(dataset={"name": "degrade"}, root=fake_data_root,
                                                                load_size=36, crop_size=28))


def test_cli_data_list_and_bench(fake_data_root, write_recipe):
    from typer.testing import CliRunner

    from i2i.cli import app

    listing = CliRunner().invoke(app, ["data", "list", "--root", str(fake_data_root)])
    assert listing.exit_code == 0
    for name in ("maps", "facades", "cityscapes", "edges2shoes", "edges2handbags", "night2day"):
        assert name in listing.output
    recipe = tiny_recipe(data={"dataset": {"name": "aligned"}, "root": str(fake_data_root)})
    bench = CliRunner().invoke(app, ["data", "bench", str(write_recipe(recipe)), "--samples", "8"])
    assert bench.exit_code == 0, bench.output
    rates = {line.split("  ")[1].strip(): line.split()[-2] for line in bench.output.splitlines() if line.endswith("samples/s")}
    assert set(rates) == {"cold (decode per sample)", "warm (cached)", "on device"}
    assert all(float(rate) > 0 for rate in rates.values())
