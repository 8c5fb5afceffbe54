"""i2i.load and the Translator: every input kind, every source, damaged weights; i2i.train."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import i2i
from i2i.engine.checkpoint import WEIGHTS_SHA256, CheckpointError, latest_checkpoint
from i2i.errors import I2IError
from i2i.translate import translate_paths

from conftest import tiny_recipe


def rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def translator(tiny_run):
    return i2i.load(tiny_run, device="cpu")


def test_import_i2i_stays_light():
    code = "import sys, i2i; assert 'torch' not in sys.modules and {'load', 'train', 'Translator'} <= set(dir(i2i))"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_translator_shows_what_it_runs(translator):
    assert translator.recipe.name == "tiny"
    assert (translator.in_channels, translator.out_channels, translator.size_multiple) == (3, 3, 32)
    assert (translator.mode, str(translator.device), translator.backend) == ("instance", "cpu", "torch")
    assert "tiny" in repr(translator)


def test_a_pil_image_gives_what_translate_writes(translator, tiny_run, tmp_path):
    Image.fromarray(rgb(70, 45)).save(tmp_path / "x.png")
    (written,) = translate_paths(tiny_run, tmp_path / "x.png", tmp_path / "out", device="cpu")
    result = translator(Image.open(tmp_path / "x.png"))
    assert isinstance(result, Image.Image) and result.mode == "RGB" and result.size == (70, 45)
    assert np.array_equal(np.asarray(result), np.asarray(Image.open(written)))


def test_numpy_and_tensors_come_back_as_they_went_in(translator):
    pixels = rgb(40, 33)
    by_pil = np.asarray(translator(Image.fromarray(pixels)))
    by_numpy = translator(pixels)
    assert by_numpy.dtype == np.uint8 and np.array_equal(by_numpy, by_pil)
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    one = translator(tensor)
    batch = translator(torch.stack([tensor, tensor.flip(-1)]))
    assert one.shape == (3, 33, 40) and one.dtype == torch.float32 and batch.shape == (2, 3, 33, 40)
    assert one.abs().max() <= 1 and torch.equal(batch[0], one)
    assert np.array_equal(((one + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(np.uint8), by_pil)


def test_gray_and_rgba_arrays_are_read_as_image_files_are(translator, tmp_path):
    gray = rgb(32, 32)[..., 0]
    assert np.array_equal(translator(gray), translator(np.repeat(gray[..., None], 3, axis=2)))
    rgba = np.dstack([rgb(32, 32), np.full((32, 32), 255, np.uint8)])
    assert np.array_equal(translator(rgba), translator(rgba[..., :3]))
    assert np.array_equal(np.asarray(translator(Image.fromarray(gray))), translator(gray))


def test_a_list_keeps_order_and_kinds_and_batches_change_nothing_in_eval_mode(tiny_run, translator):
    images = [rgb(32, 32, 1), Image.fromarray(rgb(32, 32, 2)), rgb(48, 40, 3), rgb(32, 32, 4)]
    one_by_one = [translator(image) for image in images]
    batched = i2i.load(tiny_run, device="cpu", batch_size=3)(images)
    assert [type(x) for x in batched] == [np.ndarray, Image.Image, np.ndarray, np.ndarray]
    for a, b in zip(one_by_one, batched):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert translator([]) == []


def test_large_images_are_tiled_as_translate_tiles_them(tiny_run, tmp_path):
    Image.fromarray(rgb(100, 70)).save(tmp_path / "big.png")
    (written,) = translate_paths(tiny_run, tmp_path / "big.png", tmp_path / "out", device="cpu", tile=64, overlap=16)
    tiled = i2i.load(tiny_run, device="cpu", tile=70, overlap=16)  # 70 rounds down to 64
    assert tiled.tile == 64
    assert np.array_equal(np.asarray(tiled(Image.open(tmp_path / "big.png"))), np.asarray(Image.open(written)))


@pytest.mark.parametrize(
    "image,message",
    [
        (Image.new("F", (32, 32)), "mode 'F' is not supported; use one of 1, L, LA"),
        (np.zeros((32, 32, 2), np.uint8), r"numpy image must be uint8 of shape HxW or HxWxC .*got uint8 of shape \(32, 32, 2\)"),
        (np.zeros((32, 32, 3), np.float32), "must be uint8"),
        (torch.zeros(1, 32, 32), r"C = 3 .* got torch.float32 of shape \(1, 32, 32\)"),
        (torch.zeros(3, 32, 32, dtype=torch.uint8), "must be float"),
        (np.zeros((0, 5, 3), np.uint8), "empty image"),
        ("map.png", "cannot translate a str"),
    ],
)
def test_unsupported_images_get_a_clear_error(translator, image, message):
    with pytest.raises(I2IError, match=message):
        translator(image)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"mode": "test"}, "mode must be one of eval, instance, train"), ({"backend": "tensorrt"}, "backend must be one of"),
     ({"batch_size": 0}, "batch size must be at least 1"), ({"device": "gpu7"}, "device 'gpu7'"),
     ({"tile": 40, "overlap": 32}, "tile, which is 32 px")],
)
def test_bad_settings_get_a_clear_error(tiny_run, kwargs, message):
    with pytest.raises(I2IError, match=message):
        i2i.load(tiny_run, **{"device": "cpu", **kwargs})


def test_every_local_kind_of_source_loads_the_same_generator(tiny_run, translator, tmp_path):
    folder = latest_checkpoint(tiny_run)
    shutil.copy(folder / "generator.safetensors", tmp_path / "lone.safetensors")
    image = rgb(32, 32)
    expected = translator(image)
    for source in (folder, folder / "generator.safetensors", tmp_path / "lone.safetensors", str(tiny_run)):
        assert np.array_equal(i2i.load(source, device="cpu")(image), expected), source


def test_an_onnx_export_runs_on_onnxruntime(tiny_run, translator, tmp_path):
    from i2i.export import export_generator

    exported = export_generator(tiny_run, "onnx", tmp_path / "g.onnx")
    by_onnx = i2i.load(exported.path, device="cpu")
    assert by_onnx.backend == "onnxruntime" and by_onnx.size_multiple == 32
    image = rgb(40, 36)
    assert np.abs(by_onnx(image).astype(int) - translator(image).astype(int)).max() <= 1
    with pytest.raises(I2IError, match="runs with backend onnxruntime"):
        i2i.load(exported.path, device="cpu", backend="fast")


def test_hub_and_catalogue_sources_are_handed_to_their_modules(tiny_run, monkeypatch):
    """The real downloads are tested in test_hub.py and test_model_catalogue.py."""
    import i2i.api

    file = latest_checkpoint(tiny_run) / "generator.safetensors"
    asked = []
    monkeypatch.setattr(i2i.api, "download_from_hub", lambda spec, direction: asked.append(spec) or file)
    monkeypatch.setattr(i2i.api, "ensure_model", lambda name: asked.append(name) or file.parent)
    assert i2i.load("hf://owner/repo@v1", device="cpu").recipe.name == "tiny"
    assert i2i.load("map2sat", device="cpu").recipe.name == "tiny"
    assert asked == ["owner/repo@v1", "map2sat"]
    with pytest.raises(CheckpointError, match="map2sta not found.*did you mean map2sat"):
        i2i.load("map2sta")


# ------------------------------------------------------------- damaged weights
def flip_a_weight_bit(file) -> None:
    """One exponent bit of the first float of the tensor data: the sha256 no longer matches."""
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + 3] ^= 0x40
    file.write_bytes(bytes(data))


@pytest.fixture
def damaged_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    flip_a_weight_bit(latest_checkpoint(run) / "generator.safetensors")
    return run


def test_a_flipped_bit_is_refused_by_everything_that_loads_weights(damaged_run, tmp_path):
    from i2i.bench.quality import bench_quality
    from i2i.export import export_generator

    Image.fromarray(rgb(32, 32)).save(tmp_path / "x.png")
    loaders = {
        "translate": lambda: translate_paths(damaged_run, tmp_path / "x.png", tmp_path / "out", device="cpu"),
        "load": lambda: i2i.load(damaged_run, device="cpu"),
        "load a checkpoint folder": lambda: i2i.load(latest_checkpoint(damaged_run), device="cpu"),
        "bench quality": lambda: bench_quality(damaged_run, tmp_path / "data", device="cpu", results=None),
        "export": lambda: export_generator(damaged_run, "onnx", tmp_path / "g.onnx"),
    }
    for name, action in loaders.items():
        with pytest.raises(CheckpointError, match="does not match its sha256 in .*manifest.json"):
            action()
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.onnx").exists()


def test_a_lone_safetensors_carries_its_own_checksum(damaged_run, tiny_run, tmp_path):
    lone = tmp_path / "lone.safetensors"
    shutil.copy(latest_checkpoint(damaged_run) / "generator.safetensors", lone)
    with pytest.raises(CheckpointError, match="does not match the sha256 stored in it"):
        i2i.load(lone, device="cpu")
    # a file written before the checksum existed loads unchecked
    good = latest_checkpoint(tiny_run) / "generator.safetensors"
    from safetensors import safe_open

    with safe_open(good, "pt") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != WEIGHTS_SHA256}
    save_file(load_file(good), tmp_path / "old.safetensors", metadata=metadata)
    image = rgb(32, 32)
    assert np.array_equal(i2i.load(tmp_path / "old.safetensors", device="cpu")(image), i2i.load(good, device="cpu")(image))


def test_a_damaged_recipe_in_the_metadata_is_refused_too(tiny_run, tmp_path):
    data = bytearray((latest_checkpoint(tiny_run) / "generator.safetensors").read_bytes())
    at = data.index(b"tiny")
    data[at : at + 4] = b"tinz"
    (tmp_path / "g.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256 stored in it"):
        i2i.load(tmp_path / "g.safetensors", device="cpu")


def test_a_run_directory_passes_over_a_damaged_newest_checkpoint(damaged_run, tiny_run):
    newest = latest_checkpoint(damaged_run)
    older = newest.with_name("step_00000001")
    shutil.copytree(latest_checkpoint(tiny_run), older)
    notes = []
    translator = i2i.load(damaged_run, device="cpu", warn=notes.append)
    assert len(notes) == 1 and "passing over a damaged checkpoint" in notes[0] and newest.name in notes[0]
    image = rgb(32, 32)
    assert np.array_equal(translator(image), i2i.load(older, device="cpu")(image))
    shutil.rmtree(older)
    with pytest.raises(CheckpointError, match="no usable checkpoint in"):
        i2i.load(damaged_run, device="cpu")


def test_a_manifest_without_the_file_is_refused(tiny_run, tmp_path):
    folder = tmp_path / "step"
    shutil.copytree(latest_checkpoint(tiny_run), folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["generator.safetensors"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="without an entry for generator.safetensors"):
        i2i.load(folder, device="cpu")


# ----------------------------------------------------------------------- train
def test_train_takes_overrides_with_double_underscores_or_dots(write_recipe, tmp_path, one_torch_thread):
    recipe = write_recipe(tiny_recipe(train={"tensorboard": False}))
    run = i2i.train(recipe, quiet=True, train__max_steps=1, **{"output_dir": tmp_path / "a", "data.crop_size": 32})
    assert run == tmp_path / "a" and latest_checkpoint(run).name == "step_00000001"
    translator = i2i.load(run, device="cpu")
    assert translator.recipe.train.max_steps == 1 and translator(rgb(32, 32)).shape == (32, 32, 3)
    with pytest.raises(I2IError, match="--resume"):  # a notebook cell run twice
        i2i.train(recipe, quiet=True, train__max_steps=1, output_dir=run)
    assert i2i.train(recipe, quiet=True, overwrite=True, train__max_steps=2, output_dir=run) == run
    assert latest_checkpoint(run).name == "step_00000002"
