"""``i2i bench compare`` against noise: the seed rule, the paired bootstrap over images, and the
per-image values ``i2i bench quality`` writes for it. Synthetic features with known answers."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from i2i.bench.compare import CompareError, compare_results, compare_sides
from i2i.bench.metrics import QualityMeter, frechet_distance, kernel_distance
from i2i.bench.quality import bench_quality_modes, write_per_image
from i2i.bench.significance import PerImage, bootstrap_checks, seed_check, verdict, weighted_fid, weighted_kid
from i2i.cli import app
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small matrices: threads only contend

IMAGES, DIMS = 60, 8


def features(shift: float, seed: int, count: int = IMAGES) -> torch.Tensor:
    return torch.randn(count, DIMS, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def values(shift: float, seed: int, ssim: float = 0.5) -> PerImage:
    """A record's values against the shared real set (seed 0, mean 1): generated features shifted
    by ``shift`` from 0, and per-image SSIM around ``ssim``."""
    noise = torch.rand(IMAGES, generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64) * 0.1
    return PerImage(fake=features(shift, seed), real=features(1.0, 0), ssim=ssim + noise, psnr=20 + 10 * noise)


def test_weighted_figures_are_fid_and_kid_of_the_repeated_images():
    real, fake = features(1.0, 0, 20), features(0.0, 1, 20)
    record = PerImage(fake=fake, real=real)
    ones = torch.ones(20, dtype=torch.float64)
    assert weighted_fid(record, ones, ones) == pytest.approx(frechet_distance(real, fake), rel=1e-10)
    assert weighted_kid(record, ones, ones) == pytest.approx(kernel_distance(real, fake)[0], rel=1e-10)
    counts = torch.tensor([3, 0, 1, 2, 0] * 4, dtype=torch.float64)  # a bootstrap draw: some twice, some never
    repeated_real, repeated_fake = (x.repeat_interleave(counts.long(), dim=0) for x in (real, fake))
    assert weighted_fid(record, counts, counts) == pytest.approx(frechet_distance(repeated_real, repeated_fake), rel=1e-10)
    assert weighted_kid(record, counts, counts) == pytest.approx(kernel_distance(repeated_real, repeated_fake)[0], rel=1e-10)


def test_the_bootstrap_tells_a_real_gap_from_two_draws_of_the_same():
    a = [values(0.0, seed=1, ssim=0.5)]
    closer = [values(0.8, seed=2, ssim=0.6)]  # nearer the real features, higher SSIM
    same = [values(0.0, seed=3, ssim=0.5)]  # another draw of A's distribution
    checks = bootstrap_checks(a, closer, resamples=200)
    assert {metric: verdict(metric, [check]) for metric, check in checks.items()} == {
        "fid": "better", "kid": "better", "ssim": "better", "psnr": "within noise"}
    ones = torch.ones(IMAGES, dtype=torch.float64)
    assert checks["fid"].difference == pytest.approx(closer[0].metrics(ones, ones)["fid"] - a[0].metrics(ones, ones)["fid"])
    assert {verdict(metric, [check]) for metric, check in bootstrap_checks(a, same, resamples=200).items()} == {"within noise"}
    assert verdict("fid", [bootstrap_checks(closer, a, resamples=200)["fid"]]) == "worse"


def test_the_seed_rule_needs_a_gap_of_twice_the_spread():
    assert seed_check([300.0, 310.0], [250.0, 255.0]).beyond  # gap 52.5, spread 10
    assert not seed_check([300.0, 330.0], [290.0, 300.0]).beyond  # gap 20, spread 30
    assert seed_check([300.0], [250.0, 260.0]) is None
    assert verdict("fid", [seed_check([300.0, 310.0], [250.0, 255.0])]) == "better"
    assert verdict("ssim", [seed_check([0.3, 0.31], [0.2, 0.21])]) == "worse"
    assert verdict("fid", []) == "no noise measured"


def write_side(results, recipe: str, shift: float, ssim: float, seeds=(0, 1)) -> None:
    """Records as ``i2i bench quality`` appends them, per-image files included, one per seed."""
    with open(results / "quality.jsonl", "a") as handle:
        for seed in seeds:
            record_values = values(shift, seed=10 * seed + int(shift * 10), ssim=ssim)
            meter = QualityMeter()
            meter.fake_features, meter.real_features = [record_values.fake.float()], [record_values.real.float()]
            meter.ssim, meter.psnr = [record_values.ssim.float()], [record_values.psnr.float()]
            ones = torch.ones(IMAGES, dtype=torch.float64)
            record = {"kind": "quality", "recipe": recipe, "seed": seed, "steps_trained": 3000, "mode": "instance",
                      "data": "maps", "split": "val", "limit": None, "direction": "AtoB", "device_name": "cpu",
                      "metrics": record_values.metrics(ones, ones),
                      "per_image": write_per_image(results / "quality.jsonl", meter, f"{recipe}-instance")}
            handle.write(json.dumps(record) + "\n")


def test_compare_two_sides_gives_a_verdict_per_metric(tmp_path):
    write_side(tmp_path, "pix2pix", shift=0.0, ssim=0.5)
    write_side(tmp_path, "better", shift=0.9, ssim=0.6)
    write_side(tmp_path, "same", shift=0.0, ssim=0.5, seeds=(2, 3))
    comparison = compare_sides(tmp_path, ["recipe=pix2pix"], ["recipe=bet*"], resamples=100)
    figures = {figure.metric: figure for figure in comparison.figures}
    assert [check.name for check in figures["fid"].checks] == ["seeds", "images"] and not comparison.notes
    assert figures["fid"].verdict == "better" and figures["ssim"].verdict == "better"
    assert compare_sides(tmp_path, ["recipe=pix2pix"], ["recipe=same"], resamples=100).figures[0].verdict == "within noise"

    result = CliRunner().invoke(app, ["bench", "compare", "--results", str(tmp_path), "--a", "recipe=pix2pix",
                                      "--b", "recipe=better", "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    fid_row = next(line for line in result.output.splitlines() if line.lstrip("│ ").startswith("FID"))
    assert fid_row.rstrip("│ ").endswith("better")

    with pytest.raises(CompareError, match="no quality record matches"):
        compare_sides(tmp_path, ["recipe=nothing"], ["recipe=better"], resamples=0)
    with pytest.raises(CompareError, match="differ in recipe"):
        compare_sides(tmp_path, ["recipe=*"], ["recipe=better"], resamples=0)


def test_compare_without_per_image_values_says_why_it_has_no_bootstrap(tmp_path):
    base = {"kind": "quality", "recipe": "r", "mode": "instance", "data": "d", "split": "val", "limit": None,
            "direction": "AtoB"}
    lines = [{**base, "seed": 0, "metrics": {"fid": 300.0}}, {**base, "seed": 1, "metrics": {"fid": 310.0}},
             {**base, "recipe": "s", "seed": 0, "metrics": {"fid": 250.0}}]
    (tmp_path / "quality.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    comparison = compare_sides(tmp_path, ["recipe=r"], ["recipe=s"], resamples=100)
    assert comparison.figures[0].verdict == "no noise measured"
    assert any("no seed check" in note for note in comparison.notes)
    assert any("no bootstrap over images" in note for note in comparison.notes)


def test_newest_against_previous_is_judged_by_the_bootstrap(tmp_path):
    write_side(tmp_path, "r", shift=0.0, ssim=0.5, seeds=(0,))
    write_side(tmp_path, "r", shift=0.9, ssim=0.6, seeds=(0,))
    changes = {change.figure: change for change in compare_results(tmp_path, resamples=100)}
    assert changes["fid"].verdict == "better" and changes["fid"].noise.name == "images"
    assert compare_results(tmp_path, resamples=0)[0].noise is None


class TinyFeatures(nn.Module):
    """A cheap stand-in for the Inception: 2x2 average colours, 12 features an image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)


def test_bench_quality_writes_per_image_values_that_give_back_its_figures(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(train={"max_steps": 1, "tensorboard": False}))
    Trainer(recipe, run_dir=tmp_path / "run").fit()
    results = tmp_path / "results" / "quality.jsonl"
    records = bench_quality_modes(tmp_path / "run", tmp_path, limit=3, modes=("eval", "train"), device="cpu",
                                  results=results, extractor=TinyFeatures())
    assert records[0]["per_image"]["real"] == records[1]["per_image"]["real"]  # the same images: one file
    for record in records:
        files = record["per_image"]
        assert files["fake"].startswith("quality_images/tiny-") and record["seed"] == 0
        loaded = PerImage.load(results.parent / files["fake"], results.parent / files["real"])
        ones = torch.ones(3, dtype=torch.float64)
        for metric, value in loaded.metrics(ones, ones).items():
            assert value == pytest.approx(record["metrics"][metric], rel=1e-5, abs=1e-6), metric
    (unwritten,) = bench_quality_modes(tmp_path / "run", tmp_path, limit=2, modes=("eval",), device="cpu",
                                       results=results, extractor=TinyFeatures(), per_image=False)
    assert "per_image" not in unwritten
