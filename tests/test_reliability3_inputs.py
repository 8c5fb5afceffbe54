"""Issue 23, second half: inputs i2i did not write (weights files, the engine cache, uploads to
the demo, downloads, machine-sized options, packaging) end in success or one clear line."""

from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import i2i
from i2i.cli import main
from i2i.engine.build import build_generator
from i2i.engine.checkpoint import CheckpointError, weights_with_checksum
from i2i.errors import I2IError
from i2i.recipe import Recipe

from conftest import tiny_recipe


def run_cli(arguments: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["i2i", *map(str, arguments)])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *fragments: str) -> None:
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    for fragment in fragments:
        assert fragment in err, err


# -- weights from a file nobody checked -----------------------------------------------
def tiny_weights() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    recipe = Recipe.from_dict(tiny_recipe())
    generator = build_generator(recipe, 3, 3)
    metadata = {"recipe": recipe.to_yaml(), "in_channels": "3", "out_channels": "3",
                "size_multiple": str(generator.size_multiple), "step": "1"}
    return {k: v.detach().clone().contiguous() for k, v in generator.state_dict().items()}, metadata


def write_weights(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    path.write_bytes(weights_with_checksum(tensors, metadata))
    return path


FIRST = "down.0.weight"


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_tensor(tmp_path, value, monkeypatch, capsys):
    tensors, metadata = tiny_weights()
    tensors["down.1.1.weight"][0, 0, 0, 0] = value
    file = write_weights(tmp_path / "g.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match="tensor down.1.1.weight holds NaN or infinite values"):
        i2i.load(file, device="cpu")
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    code, err = run_cli(["translate", "--checkpoint", file, "--input", tmp_path / "x.png", "--output", tmp_path / "out"],
                        monkeypatch, capsys)
    assert_one_line(code, err, "down.1.1.weight")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int32, torch.bool, torch.complex64, torch.uint8])
def test_weights_that_are_not_floating_point_are_refused_naming_the_tensor(tmp_path, dtype):
    tensors, metadata = tiny_weights()
    tensors[FIRST] = tensors[FIRST].to(dtype)
    file = write_weights(tmp_path / "g.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=f"tensor {FIRST} is .*needs floating point"):
        i2i.load(file, device="cpu")


def test_half_precision_weights_still_load(tmp_path):
    tensors, metadata = tiny_weights()
    tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    translator = i2i.load(write_weights(tmp_path / "g.safetensors", tensors, metadata), device="cpu")
    assert translator(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30, 3)


BAD_METADATA = {
    "size_multiple -64": ({"size_multiple": "-64"}, "size_multiple"),
    "size_multiple 0": ({"size_multiple": "0"}, "size_multiple"),
    "a size_multiple the U-Net cannot take": ({"size_multiple": "1"}, "size_multiple 1"),
    "a huge size_multiple": ({"size_multiple": "99999999"}, "size_multiple"),
    "in_channels abc": ({"in_channels": "abc"}, "in_channels"),
    "in_channels 0": ({"in_channels": "0"}, "in_channels"),
    "out_channels a million": ({"out_channels": "1000000"}, "out_channels"),
    "a 5000-digit channel count": ({"in_channels": "9" * 5000}, "in_channels"),
    "a step that is no number": ({"step": "x"}, "step"),
    "no recipe": ({"recipe": None}, "recipe"),
    "a recipe that is not YAML": ({"recipe": "name: [unclosed"}, "not valid YAML"),
    "a recipe with a 5000-digit seed": ({"recipe": "train: {seed: " + "9" * 5000 + "}"}, "not valid YAML"),
    "a recipe that is a list": ({"recipe": "[1, 2]"}, "mapping"),
    "a recipe with crop 100000": (None, "crop_size: 100000 is above the limit"),
}


def hostile_metadata(case: str) -> dict[str, str]:
    _, metadata = tiny_weights()
    change, _ = BAD_METADATA[case]
    if change is None:
        recipe = tiny_recipe(data={"load_size": 100000, "crop_size": 100000})
        return {**metadata, "recipe": Recipe.model_validate(recipe).to_yaml()}
    return {k: v for k, v in {**metadata, **change}.items() if v is not None}


@pytest.mark.parametrize("case", list(BAD_METADATA))
def test_hostile_metadata_is_refused_before_anything_is_built(case, tmp_path, monkeypatch):
    tensors, _ = tiny_weights()
    file = write_weights(tmp_path / "g.safetensors", tensors, hostile_metadata(case))
    monkeypatch.setattr("i2i.engine.build.build_generator", lambda *a, **k: pytest.fail("built from hostile metadata"))
    with pytest.raises(I2IError, match=BAD_METADATA[case][1]) as caught:
        i2i.load(file, device="cpu", backend="fast")
    assert len(str(caught.value)) < 600


@pytest.mark.parametrize("command", ["translate", "export", "bench"])
def test_hostile_metadata_is_one_line_in_every_command(command, tmp_path, monkeypatch, capsys):
    tensors, _ = tiny_weights()
    file = write_weights(tmp_path / "g.safetensors", tensors, hostile_metadata("size_multiple 0"))
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    arguments = {
        "translate": ["translate", "--checkpoint", file, "--input", tmp_path / "x.png", "--output", tmp_path / "out",
                      "--backend", "fast"],
        "export": ["export", "--checkpoint", file, "--output", tmp_path / "g.onnx"],
        "bench": ["bench", "quality", "--checkpoint", file, "--data", tmp_path, "--results", tmp_path / "q.jsonl"],
    }[command]
    code, err = run_cli(arguments, monkeypatch, capsys)
    assert_one_line(code, err, "size_multiple")


def test_a_header_that_claims_more_than_the_file_holds_is_refused_from_the_header(tmp_path):
    _, metadata = tiny_weights()
    claimed = 100000 * 100000 * 8 * 8 * 4
    header = json.dumps({"__metadata__": metadata,
                         FIRST: {"dtype": "F32", "shape": [100000, 100000, 8, 8], "data_offsets": [0, claimed]}}).encode()
    (tmp_path / "g.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(64))
    with pytest.raises(CheckpointError, match="cannot read weights"):
        i2i.load(tmp_path / "g.safetensors", device="cpu")


def test_tensors_the_recipe_does_not_build_are_refused_before_any_is_read(tmp_path, monkeypatch):
    """A file holding more than the generator (a Hub file of gigabytes) is refused from its header alone."""
    tensors, metadata = tiny_weights()
    file = write_weights(tmp_path / "g.safetensors", {**tensors, "extra": torch.zeros(1000, 1000)}, metadata)
    monkeypatch.setattr("i2i.engine.checkpoint.load_safetensors_file", lambda *a: pytest.fail("tensors read"))
    with pytest.raises(CheckpointError, match="unexpected extra"):
        i2i.load(file, device="cpu")


def test_the_weights_check_costs_little_on_the_flagship(tmp_path):
    """The flagship U-Net 256 (54M parameters): the finiteness check against loading itself."""
    import time

    from i2i.engine.checkpoint import first_nonfinite

    recipe = Recipe.from_dict(tiny_recipe(model={"generator": {"name": "unet", "params": {}},
                                                 "discriminator": {"name": "patchgan", "params": {}}}))
    tensors = build_generator(recipe, 3, 3).state_dict()
    assert sum(t.numel() for t in tensors.values()) > 54e6
    start = time.perf_counter()
    assert first_nonfinite(tensors) is None
    seconds = time.perf_counter() - start
    print(f"finiteness check of the U-Net 256: {seconds * 1000:.0f} ms")
    assert seconds < 2.0


# -- ONNX files -----------------------------------------------------------------------
def onnx_without_graph(path: Path) -> Path:
    import onnx

    onnx.save(onnx.ModelProto(ir_version=8), path)
    return path


def onnx_with_metadata(path: Path, metadata: dict[str, str]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, "h", "w"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("kind", ["random bytes", "no graph", "broken recipe YAML", "size_multiple 0"])
def test_an_onnx_file_that_is_not_an_export_is_one_line(kind, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "g.onnx"
    _, metadata = tiny_weights()
    if kind == "random bytes":
        path.write_bytes(os.urandom(3000))
    elif kind == "no graph":
        onnx_without_graph(path)
    elif kind == "broken recipe YAML":
        onnx_with_metadata(path, {**metadata, "recipe": "name: [x"})
    else:
        onnx_with_metadata(path, {**metadata, "size_multiple": "0"})
    with pytest.raises(I2IError):
        i2i.load(path, device="cpu")
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    code, err = run_cli(["translate", "--checkpoint", path, "--input", tmp_path / "x.png", "--output", tmp_path / "o"],
                        monkeypatch, capsys)
    assert_one_line(code, err, str(path))


# -- import-weights ---------------------------------------------------------------------
def reference_state() -> dict[str, torch.Tensor]:
    from i2i.reference_weights import reference_key

    recipe = Recipe.from_dict(tiny_recipe())
    generator = build_generator(recipe, 3, 3)
    return {reference_key(k, len(generator.down)): v.clone() for k, v in generator.state_dict().items()}


@pytest.mark.parametrize("value", ["nan", "inf", "int", "bool", "complex"])
def test_import_weights_refuses_tensors_that_are_not_finite_floats(value, tmp_path, monkeypatch, capsys, write_recipe):
    state = reference_state()
    name = next(k for k in state if k.endswith("weight"))
    changed = {"nan": lambda t: t.fill_(float("nan")), "inf": lambda t: t.fill_(float("inf")),
               "int": lambda t: t.int(), "bool": lambda t: t.bool(), "complex": lambda t: t.to(torch.complex64)}[value]
    state[name] = changed(state[name])
    torch.save(state, tmp_path / "g.pth")
    recipe = write_recipe(tiny_recipe())
    code, err = run_cli(["import-weights", tmp_path / "g.pth", "--recipe", recipe, "--output", tmp_path / "out"],
                        monkeypatch, capsys)
    assert_one_line(code, err, name)
    assert not (tmp_path / "out").exists()


def test_a_pth_zip_bomb_is_refused_from_its_zip_headers(tmp_path, monkeypatch):
    from i2i.reference_weights import WeightsError, read_reference_weights

    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (20 << 20))
    assert bomb.stat().st_size < 100_000
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("inflated"))
    with pytest.raises(WeightsError, match="would inflate"):
        read_reference_weights(bomb)
