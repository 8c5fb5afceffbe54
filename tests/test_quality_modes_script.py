"""benchmarks/quality_modes.py end to end on a tiny recipe: the records that decide the defaults."""

import json
import subprocess
import sys

import pytest

from i2i.modes import DEFAULT_MODE

from conftest import ROOT, tiny_recipe


@pytest.mark.slow
def test_modes_records_per_step_and_the_translate_check(fake_data_root, write_recipe, tmp_path):
    recipe = tiny_recipe(
        data={"dataset": {"name": "aligned"}, "num_workers": 0},
        train={"epochs": 10, "eval_bn_batches": 2, "ema": {"decay": 0.9, "every": 1}, "tensorboard": False,
               "engine_probe": False},
    )
    results, runs = tmp_path / "quality.jsonl", tmp_path / "runs"
    script = [sys.executable, str(ROOT / "benchmarks" / "quality_modes.py"), "--recipe", str(write_recipe(recipe)),
              "--data", str(fake_data_root), "--limit", "2", "--device", "cpu", "--results", str(results)]
    done = subprocess.run([*script, "--steps", "2", "--out", str(runs)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["kind"], r["steps_trained"]) for r in records] == [("quality_modes", 2)]
    for record in records:
        assert sorted(record["runs"]) == ["0", "1"]
        summary = record["summary"]
        assert set(summary) == {"default", "trained", "no_ema"}
        assert set(summary["trained"]) == {"eval", "instance", "train"} and set(summary["default"]) == {"eval", "instance"}
        for modes in summary.values():
            for metrics in modes.values():
                assert set(metrics) == {"fid", "kid", "ssim", "psnr"}
                assert all(value["spread"] >= 0 for value in metrics.values())

    checkpoint = runs / "seed0" / "checkpoints" / "step_00000002"
    done = subprocess.run([*script, "--translate-check", str(checkpoint)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    check = json.loads(results.read_text().splitlines()[-1])
    assert check["kind"] == "quality_translate" and check["limit"] == 2 and check["checkpoint"] == str(checkpoint)
    assert check["metrics"]["fid"] >= 0 and -1 <= check["metrics"]["ssim"] <= 1


@pytest.mark.slow
def test_quality_per_hour_stops_both_engines_and_scores_their_outputs(fake_data_root, write_recipe, tmp_path):
    recipe = tiny_recipe(data={"dataset": {"name": "aligned"}, "num_workers": 0},
                         train={"epochs": 1000, "tensorboard": False, "engine_probe": False})
    results = tmp_path / "quality.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "quality_modes.py"), "--recipe",
                           str(write_recipe(recipe)), "--data", str(fake_data_root), "--limit", "2", "--device", "cpu",
                           "--results", str(results), "--wall-clock", "0.5", "--out", str(tmp_path / "runs"),
                           "--engine-set", "fast:train.ema={}"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    (record,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert record["kind"] == "quality_per_hour" and record["minutes"] == 0.5
    for engine in ("reference", "fast"):
        for run in record["runs"][engine].values():
            assert run["steps"] >= 1, "each engine trained and was stopped with a checkpoint"
            assert set(run["scores"]["trained"]) == {"train", DEFAULT_MODE}  # published output, translate's default
        assert set(record["summary"][engine]["trained"]["train"]) == {"fid", "kid", "ssim", "psnr"}
    assert record["engine_overrides"] == {"fast": ["train.ema={}"]}
    averaged = {engine: all("default" in run["scores"] for run in record["runs"][engine].values()) for engine in ("reference", "fast")}
    assert averaged == {"reference": False, "fast": True}, "the averaged generator only where that engine's setting asked"
