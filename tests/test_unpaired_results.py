"""Using an unpaired run (issue 20): export, demo and the Hub take a direction, and bench quality
scores a set without pairs (FID and KID only) and one with pairs (SSIM and PSNR too), both ways."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from i2i.cli import app
from i2i.engine.trainer import Trainer
from i2i.errors import I2IError
from i2i.recipe import Recipe
from test_hub import OWNER_REPO, TOKEN, hub  # noqa: F401  (hub: the loopback Hub fixture)
from test_unpaired import train, unpaired_recipe, unpaired_runs  # noqa: F401  (a finished cyclegan and cut run)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
runner = CliRunner()


class MeanColour(torch.nn.Module):
    """A stand-in for the Inception features: the mean colour of each image."""

    def forward(self, images):
        return images.float().mean((2, 3))


def test_export_writes_the_other_generator_named_for_its_direction(unpaired_runs, tmp_path, monkeypatch):
    import i2i

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "--checkpoint", str(unpaired_runs["cyclegan"]), "--direction", "BtoA"])
    assert result.exit_code == 0, result.output
    exported = i2i.load(tmp_path / "tiny_generator_BtoA.onnx", device="cpu")
    backward = i2i.load(unpaired_runs["cyclegan"], device="cpu", direction="BtoA")
    forward = i2i.load(unpaired_runs["cyclegan"], device="cpu")
    assert exported.metadata["direction"] == "BtoA"
    x = torch.rand(3, 36, 44) * 2 - 1
    assert torch.allclose(exported(x), backward(x), atol=1e-3) and not torch.allclose(exported(x), forward(x), atol=1e-3)
    cut = runner.invoke(app, ["export", "--checkpoint", str(unpaired_runs["cut"]), "--direction", "BtoA"])
    assert isinstance(cut.exception, I2IError) and "trains one generator" in str(cut.exception)


def test_demo_serves_the_direction_asked_for_and_offers_its_inputs(unpaired_runs, monkeypatch, tmp_path):
    import i2i
    from conftest import write_fake_photos
    from i2i.demo import val_examples
    from i2i.engine.build import build_dataset
    from i2i.visual import to_uint8

    served = {}
    monkeypatch.setattr("i2i.demo.serve", lambda source, *args, direction, **kwargs: served.update(direction=direction))
    result = runner.invoke(app, ["demo", str(unpaired_runs["cyclegan"]), "--direction", "BtoA"])
    assert result.exit_code == 0, result.output
    assert served == {"direction": "BtoA"}

    data = unpaired_runs["inputs"].parent  # the val split of `unaligned` is testA / testB
    for side, seed in (("A", 3), ("B", 4)):
        write_fake_photos(data / f"test{side}", 2, (40, 40), seed=seed)
    backward = i2i.load(unpaired_runs["cyclegan"], device="cpu", direction="BtoA")
    (first, _) = val_examples(backward, tmp_path)
    expected = to_uint8(build_dataset(backward.recipe, "val", train=False)[0]["target"][None])[0]
    assert np.array_equal(np.asarray(Image.open(first)), expected)


def test_push_uploads_the_other_generator_and_hf_loads_either(unpaired_runs, hub):  # noqa: F811
    import i2i
    from i2i.engine.inference import resolve_generator_file
    from i2i.hub import download_from_hub, push_to_hub

    run = unpaired_runs["cyclegan"]
    pushed = push_to_hub(run, OWNER_REPO, token=TOKEN, quality_results=None)
    stored = hub.repos[OWNER_REPO]["main"]
    assert "generator_ba.safetensors" in pushed.files
    assert stored["generator_ba.safetensors"] == (resolve_generator_file(run).parent / "generator_ba.safetensors").read_bytes()
    x = torch.rand(3, 36, 44) * 2 - 1
    for direction in ("AtoB", "BtoA"):
        remote = i2i.load(f"hf://{OWNER_REPO}", device="cpu", direction=direction)
        assert remote.metadata["direction"] == direction
        assert torch.equal(remote(x), i2i.load(run, device="cpu", direction=direction)(x))

    push_to_hub(unpaired_runs["cut"], "someone/tiny-cut", token=TOKEN, quality_results=None)
    assert "generator_ba.safetensors" not in hub.repos["someone/tiny-cut"]["main"]
    with pytest.raises(I2IError, match="method cut trains one generator"):
        i2i.load("hf://someone/tiny-cut", device="cpu", direction="BtoA")
    del stored["generator_ba.safetensors"]  # a repo pushed before push uploaded it
    with pytest.raises(I2IError, match="has no generator_ba.safetensors: it was pushed without the B -> A generator"):
        download_from_hub(f"{OWNER_REPO}@main", "BtoA")


def finite(metrics: dict, keys: tuple[str, ...]) -> bool:
    return all(math.isfinite(metrics[key]) for key in keys)


def test_bench_quality_without_pairs_compares_the_two_sets_each_way(unpaired_runs, fake_data_root, tmp_path):
    from i2i.bench.quality import bench_quality

    run = unpaired_runs["cyclegan"]
    forward, backward = (bench_quality(run, fake_data_root, mode="eval", device="cpu", results=None,
                                       extractor=MeanColour(), direction=direction) for direction in ("AtoB", "BtoA"))
    # testA holds 2 images, testB 3: each set is scored whole, each image once
    assert (forward["metrics"]["images"], forward["metrics"]["real_images"]) == (2, 3)
    assert (backward["metrics"]["images"], backward["metrics"]["real_images"]) == (3, 2)
    for record, direction in ((forward, "AtoB"), (backward, "BtoA")):
        assert record["direction"] == direction
        assert record["unpaired_metrics"] == ["fid", "kid"] and record["paired_metrics"] == []
        assert finite(record["metrics"], ("fid", "kid")) and "ssim" not in record["metrics"]
    assert (forward["weights"], backward["weights"]) == ("generator.safetensors", "generator_ba.safetensors")

    results = tmp_path / "quality.jsonl"
    result = runner.invoke(app, ["bench", "quality", "--checkpoint", str(run), "--data", str(fake_data_root),
                                 "--mode", "eval", "--device", "cpu", "--results", str(results), "--direction", "BtoA"])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())  # as rich wraps it
    assert "3 val images against 2 real ones (no pairs)" in output and "FID" in output and "SSIM" not in output
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["direction"] == "BtoA" and finite(record["metrics"], ("fid", "kid"))


def test_bench_quality_with_pairs_adds_ssim_and_psnr_against_the_other_half(fake_data_root, tmp_path):
    from i2i.bench.quality import bench_quality

    recipe = unpaired_recipe("cyclegan", fake_data_root, max_steps=1)
    recipe["data"]["dataset"] = {"name": "unpaired_aligned"}  # train/ and val/ of A|B files
    Trainer(Recipe.from_dict(recipe), run_dir=tmp_path / "run").fit()
    record = bench_quality(tmp_path / "run", fake_data_root, mode="eval", device="cpu", results=None,
                           extractor=MeanColour(), direction="BtoA")
    assert record["paired_metrics"] == ["ssim", "psnr"] and record["unpaired_metrics"] == ["fid", "kid"]
    assert record["metrics"]["images"] == 2 and finite(record["metrics"], ("fid", "kid", "ssim", "psnr"))
