"""Exports run in onnxruntime / torch.export as in PyTorch, and translate runs on onnxruntime."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from i2i.cli import app
from i2i.engine.inference import load_generator
from i2i.engine.trainer import Trainer
from i2i.export import TOLERANCE, OnnxRuntimeGenerator, export_generator, onnxruntime_generator
from i2i.recipe import Recipe
from i2i.errors import I2IError

from conftest import tiny_recipe


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    Trainer(Recipe.from_dict(tiny_recipe(train={"max_steps": 1, "tensorboard": False})), run_dir=run_dir).fit()
    return run_dir


@pytest.fixture(scope="module")
def onnx_export(trained_run, tmp_path_factory):
    return export_generator(trained_run, "onnx", tmp_path_factory.mktemp("onnx") / "g.onnx", mode="eval")


def test_onnx_export_matches_pytorch_at_another_size_and_batch(trained_run, onnx_export):
    exported = onnx_export
    assert exported.max_abs_diff < TOLERANCE
    generator, _, _ = load_generator(trained_run)
    x = torch.rand(3, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        expected = generator.eval()(x)
    torch.testing.assert_close(OnnxRuntimeGenerator(exported.path)(x), expected, atol=TOLERANCE, rtol=0)


def test_pt2_export_via_the_cli(trained_run, tmp_path):
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(trained_run), "--format", "pt2",
                                      "--output", str(tmp_path / "g.pt2")])
    assert result.exit_code == 0, result.output
    assert "max abs difference to PyTorch" in " ".join(result.output.split())
    program = torch.export.load(tmp_path / "g.pt2").module()
    assert program(torch.zeros(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_translate_with_onnxruntime_matches_torch(trained_run, onnx_export, tmp_path):
    from i2i.translate import translate_paths

    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(source)
    (by_torch,) = translate_paths(trained_run, source, tmp_path / "torch", device="cpu", mode="eval")
    (by_onnx,) = translate_paths(onnx_export.path, source, tmp_path / "onnx", device="cpu", backend="onnxruntime",
                                 mode="eval")
    difference = np.abs(np.asarray(Image.open(by_torch), int) - np.asarray(Image.open(by_onnx), int))
    assert difference.max() <= 1  # uint8 rounding of outputs that agree within 1e-3


def test_onnxruntime_refuses_train_mode(trained_run):
    with pytest.raises(I2IError, match="in mode eval or instance; not train"):
        onnxruntime_generator(trained_run, "train")


def test_instance_mode_exports_as_instance_normalization_and_runs_only_in_that_mode(trained_run, onnx_export, tmp_path):
    from i2i.engine.inference import generator_mode

    exported = export_generator(trained_run, "onnx", tmp_path / "instance.onnx", mode="instance")
    generator, _, _ = load_generator(trained_run)
    x = torch.rand(3, 3, 64, 96) * 2 - 1
    with torch.no_grad(), generator_mode(generator, "instance"):
        expected = generator(x)
    onnx = OnnxRuntimeGenerator(exported.path)
    assert onnx.metadata["mode"] == "instance"
    torch.testing.assert_close(onnx(x), expected, atol=TOLERANCE, rtol=0)
    assert onnxruntime_generator(exported.path, "instance")[0].metadata["mode"] == "instance"
    with pytest.raises(I2IError, match="exported in eval mode, not instance: pass --mode eval"):
        onnxruntime_generator(onnx_export.path, "instance")
    with pytest.raises(I2IError, match="--mode must be one of eval, instance"):
        export_generator(trained_run, "onnx", tmp_path / "train.onnx", mode="train")


@pytest.mark.parametrize("backend", ["fast", pytest.param("compiled", marks=pytest.mark.slow)])
def test_translate_fast_backends_match_torch(trained_run, tmp_path, backend):
    from i2i.translate import translate_paths

    source = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(source)
    (by_torch,) = translate_paths(trained_run, source, tmp_path / "torch", device="cpu")
    (by_fast,) = translate_paths(trained_run, source, tmp_path / backend, device="cpu", backend=backend)
    difference = np.abs(np.asarray(Image.open(by_torch), int) - np.asarray(Image.open(by_fast), int))
    assert difference.max() <= 4  # bf16 rounding, in uint8 steps
