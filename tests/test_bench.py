"""``i2i bench``: speed and quality records, regression checks, evaluation during training."""

import json

import pytest
import torch
from typer.testing import CliRunner

from i2i.bench.compare import compare_results
from i2i.bench.quality import bench_quality, bicubic_baseline, protocol_dataset
from i2i.bench.speed import bench_recipe
from i2i.cli import app
from i2i.engine.autotune import static_settings
from i2i.engine.inference import load_generator
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe
from i2i.run import build_trainer
from i2i.errors import I2IError
from i2i.modes import DEFAULT_MODE, MODES

from conftest import RecordLogs, tiny_recipe

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_bench_speed_appends_a_json_line_and_compare_flags_a_slowdown_and_a_drift(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    results = tmp_path / "results"
    recipe = write_recipe(tiny_recipe())
    arguments = ["bench", "speed", str(recipe), "--device", "cpu", "--steps", "1", "--warmup", "1", "--repeats", "2",
                 "--infer-batch", "2", "--peak-size", "64", "--results", str(results / "speed.jsonl")]
    result = invoke(*arguments)
    assert result.exit_code == 0, result.output
    assert "steps/s" in result.output and "default" in result.output
    assert "of peak" in result.output and "matmul peak" in result.output
    (line,) = (results / "speed.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["kind"] == "speed" and record["recipe"] == "tiny" and record["device"] == "cpu"
    assert record["torch"] == torch.__version__ and record["git_commit"]
    assert record["image_size"] == 32 and record["batches"] == "real"
    configs = record["configs"]
    assert configs["baseline"]["settings"] == {"engine": "reference", "precision": "fp32", "channels_last": False,
                                               "fused_adam": False, "cpu_speedups": False, "cuda_graph": False,
                                               "compile": False}
    assert configs["baseline"]["engine_source"] == "reference"
    assert configs["tuned"]["settings"] == {"engine": "fast", **static_settings(torch.device("cpu"))}
    assert configs["default"]["settings"] == {} and configs["default"]["engine_source"] in ("measured", "cached", "static")
    assert set(record["matmul_peak"]["gflop_per_s"]) >= {"fp32_64"} and record["matmul_peak"]["best_gflop_per_s"] > 0
    for config in configs.values():
        assert config["train_steps_per_s"]["median"] > 0 and len(config["train_steps_per_s"]["runs"]) == 2
        assert config["train_gflop_per_step"] == configs["baseline"]["train_gflop_per_step"] > 0  # the same math
        assert config["train_gflop_per_s"] > 0 and config["train_fraction_of_peak"] > 0
    for name in ("baseline", "tuned"):
        assert set(configs[name]["inference_images_per_s"]) == {f"{mode}_batch{b}" for mode in MODES for b in (1, 2)}
        assert configs[name]["inference_gflop_per_image"] > 0
        assert set(configs[name]["inference_fraction_of_peak"]) == set(configs[name]["inference_images_per_s"])
        assert configs[name]["peak_memory_mib"] > 0
    assert record["ratio"]["train_steps_per_s"] > 0 and record["ratio"]["default_over_tuned_train_steps_per_s"] > 0
    # the limits: once at the start, around each training timing's 2 repeats, after each inference
    assert record["limits"]["samples"] == 1 + 2 * 3 + 2 and record["limits"]["bandwidth_gb_per_s"]["dram"]["median"] > 0
    assert "of bound" in result.output and "furthest from their roof" in result.output and "triad beyond" in result.output
    for config in configs.values():
        roof = config["train_roofline"]
        assert roof["gflop"] == pytest.approx(config["train_gflop_per_step"]) and roof["bound_s"] > 0
        assert config["train_fraction_of_bound"] == roof["bound_s"] / roof["seconds"] and len(roof["furthest"]) == 5
    for name in ("baseline", "tuned"):
        assert set(configs[name]["inference_fraction_of_bound"]) == set(configs[name]["inference_images_per_s"])
    tuned = configs["tuned"]
    # the notes say what fast_generator chose per timed call, and nothing fell back to eager
    assert tuned["inference_path"] == "fast_generator compiled", tuned
    assert [note.split(":")[0] for note in tuned["inference_notes"]] == [
        f"fast_generator {key}" for key in tuned["inference_images_per_s"]], tuned["inference_notes"]
    assert all("channels_last, 0 thin convolutions as matmuls" in note for note in tuned["inference_notes"])

    even = json.loads(line)  # default and tuned equal: nothing drifts, and one record has no history
    even["configs"]["default"]["train_steps_per_s"]["median"] = even["configs"]["tuned"]["train_steps_per_s"]["median"]
    (results / "speed.jsonl").write_text(json.dumps(even) + "\n")
    assert invoke("bench", "compare", "--results", str(results)).exit_code == 0
    slower = json.loads(json.dumps(even))
    slower["configs"]["tuned"]["train_steps_per_s"]["median"] /= 2  # a regression, and default now 2x tuned
    with open(results / "speed.jsonl", "a") as handle:
        handle.write(json.dumps(slower) + "\n")
    result = invoke("bench", "compare", "--results", str(results), "--threshold", "0.1")
    assert result.exit_code == 1 and "REGRESSION" in result.output and "DRIFT" in result.output
    flagged = [c for c in compare_results(results) if c.is_regression(0.1)]
    assert [c.figure for c in flagged] == ["tuned train steps/s", "default vs tuned train steps/s"]


def test_speed_uses_random_batches_when_the_data_folder_is_missing(write_recipe, tmp_path):
    recipe = tiny_recipe(data={"dataset": {"name": "aligned"}, "root": str(tmp_path / "absent")})
    built, real_data = bench_recipe(write_recipe(recipe), [], torch.device("cpu"))
    assert not real_data
    assert built.data.dataset.name == "synthetic" and built.data.crop_size == 32


def test_quality_compare_flags_a_worse_fid(tmp_path):
    base = {"kind": "quality", "device_name": "cpu", "recipe": "r", "steps_trained": 10, "data": "d", "split": "val",
            "limit": None, "mode": "train", "metrics": {"fid": 50.0, "kid": 0.02, "ssim": 0.5, "psnr": 20.0}}
    worse = {**base, "metrics": {**base["metrics"], "fid": 60.0, "ssim": 0.52}}
    (tmp_path / "quality.jsonl").write_text(json.dumps(base) + "\n" + json.dumps(worse) + "\n")
    changes = {c.figure: c for c in compare_results(tmp_path)}
    assert changes["fid"].is_regression(0.1) and not changes["fid"].is_regression(0.25)
    assert changes["ssim"].relative == pytest.approx(0.04) and not changes["ssim"].is_regression(0.1)


@pytest.fixture
def tiny_run(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(train={"max_steps": 2, "batch_size": 2, "tensorboard": False}))
    Trainer(recipe, run_dir=tmp_path / "run").fit()
    return tmp_path / "run"


def test_bench_quality_scores_every_mode_in_one_call_with_plain_progress_lines(tiny_run, tmp_path):
    results = tmp_path / "quality.jsonl"
    result = invoke("bench", "quality", "--checkpoint", str(tiny_run), "--data", str(tmp_path), "--limit", "2",
                    "--device", "cpu", "--results", str(results), "--progress-every", "1")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["mode"] for r in records] == ["eval", "instance", "train"]
    for record in records:
        assert record["steps_trained"] == 2 and record["protocol"]["image_size"] == 256
        assert record["weights"] == "generator.safetensors"
        metrics = record["metrics"]
        assert metrics["images"] == 2 and metrics["fid"] >= 0 and 0 < metrics["psnr"] < 100 and -1 <= metrics["ssim"] <= 1
    for line in ("train mode: 1/2 images scored", "train mode: 2/2 images scored", "eval mode: 2/2 images scored"):
        assert line in result.output  # not a terminal: plain lines, not a progress bar

    one = invoke("bench", "quality", "--checkpoint", str(tiny_run), "--data", str(tmp_path), "--limit", "2",
                 "--device", "cpu", "--results", str(results), "--mode", "eval")
    assert one.exit_code == 0, one.output
    assert json.loads(results.read_text().splitlines()[-1])["metrics"] == records[0]["metrics"]  # eval is deterministic
    wrong = invoke("bench", "quality", "--checkpoint", str(tiny_run), "--data", str(tmp_path), "--mode", "test")
    assert wrong.exit_code != 0 and "must be eval, instance, train or all" in wrong.output


def test_bench_quality_scores_super_resolution_next_to_bicubic(fake_data_root, tmp_path):
    """On ``degrade`` data the record adds the bicubic input's own scores: the floor a
    super-resolution model has to beat."""
    import yaml

    from conftest import ROOT, shrink

    recipe = Recipe.from_dict(shrink(yaml.safe_load((ROOT / "recipes" / "super_resolution_x4.yaml").read_text()), fake_data_root))
    Trainer(recipe, run_dir=tmp_path / "run").fit()
    record = bench_quality(tmp_path / "run", fake_data_root, device="cpu", results=None)
    val = protocol_dataset(recipe, fake_data_root)
    by_hand = []
    for i in range(len(val)):
        low, high = (((val[i][k] + 1) * 127.5).round() for k in ("input", "target"))
        by_hand.append(10 * torch.log10(255.0**2 / ((low - high) ** 2).mean()))
    assert record["bicubic_baseline"]["images"] == record["metrics"]["images"] == 2
    assert record["bicubic_baseline"]["psnr"] == pytest.approx(float(torch.stack(by_hand).mean()), abs=1e-3)
    assert 0 < record["metrics"]["ssim"] <= 1 and 0 < record["metrics"]["psnr"] < 100


def test_bicubic_baseline_upscales_the_input_to_the_target_size():
    flat = torch.full((3, 32, 32), 0.2)
    pairs = [{"input": torch.full((3, 16, 16), 0.2), "target": flat}, {"input": flat, "target": flat}]
    metrics = bicubic_baseline(pairs)
    assert metrics["images"] == 2 and metrics["ssim"] == pytest.approx(1.0) and metrics["psnr"] == 100.0


def test_evaluation_during_training_logs_fid_and_keeps_the_best_checkpoint(tmp_path):
    train = {"max_steps": 2, "batch_size": 4, "eval_every": 1, "eval_images": 2, "tensorboard": False}
    recipe = Recipe.from_dict(tiny_recipe(train=train))
    trainer = build_trainer(recipe, run_dir=tmp_path / "run", tensorboard=False)
    logs = RecordLogs()
    trainer.callbacks.append(logs)  # evaluation records go through trainer.log like the losses
    trainer.fit()
    evaluations = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "eval_fid" in r]
    assert [r["step"] for r in evaluations] == [2] and evaluations[0]["eval_images"] == 2
    assert evaluations[0]["eval_mode"] == DEFAULT_MODE
    assert [r for r in logs.records if "eval_fid" in r] == evaluations
    manifest = json.loads((tmp_path / "run" / "best" / "manifest.json").read_text())
    assert manifest["best"]["fid"] == evaluations[0]["eval_fid"] and manifest["best"]["step"] == 2
    generator, _, metadata = load_generator(tmp_path / "run" / "best")
    assert metadata["step"] == "2"


def test_evaluation_during_training_scores_an_unaligned_set_as_two_sets(fake_data_root, tmp_path, one_torch_thread):
    """As bench quality: testA translated against testB, FID and KID only; no pair, no SSIM or PSNR."""
    from test_unpaired import unpaired_recipe

    recipe = Recipe.from_dict(unpaired_recipe("cut", fake_data_root, max_steps=4, eval_every=1, eval_images=2))
    trainer = build_trainer(recipe, run_dir=tmp_path / "run", tensorboard=False)
    trainer.fit()
    evaluations = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "eval_fid" in r]
    assert [r["step"] for r in evaluations] == [4] and evaluations[0]["eval_images"] == 2
    assert "eval_kid" in evaluations[0] and not {"eval_ssim", "eval_psnr"} & evaluations[0].keys()


def test_eval_every_without_a_val_split_is_a_clear_error(fake_data_root, tmp_path):
    (fake_data_root / "val").rename(fake_data_root / "elsewhere")
    data = {"dataset": {"name": "aligned"}, "root": str(fake_data_root)}
    recipe = Recipe.from_dict(tiny_recipe(data=data, train={"eval_every": 1, "tensorboard": False}))
    with pytest.raises(I2IError, match="train.eval_every needs a val split"):
        build_trainer(recipe, run_dir=tmp_path / "run")
