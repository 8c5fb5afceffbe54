"""benchmarks/recipe_study.py end to end on a tiny recipe: the records the maps recipe study keeps."""

import importlib.util
import json
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_recipe
from i2i.recipe import Recipe, find_recipe

SCRIPT = ROOT / "benchmarks" / "recipe_study.py"


def run_study(write_recipe, data_root, tmp_path, epochs: int, *arguments: str) -> list[dict]:
    """The script on a tiny aligned recipe, scoring val 1..2; the records it appended."""
    recipe = write_recipe(tiny_recipe(data={"dataset": {"name": "aligned"}, "num_workers": 0},
                                      train={"epochs": epochs, "tensorboard": False, "engine_probe": False}))
    results = tmp_path / "study.jsonl"
    done = subprocess.run([sys.executable, str(SCRIPT), "--recipe", str(recipe), "--data", str(data_root), "--limit", "2",
                           "--results", str(results), "--out", str(tmp_path / "runs"), *arguments],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in results.read_text().splitlines()]


@pytest.mark.slow
def test_equal_steps_records_each_candidate_with_and_without_the_average(fake_data_root, write_recipe, tmp_path):
    records = run_study(write_recipe, fake_data_root, tmp_path, 10, "--candidates", "l1_10", "--steps", "2",
                        "--with-ema", "--jobs", "2")
    assert [r["candidate"] for r in records] == ["l1_10", "l1_10+ema"]
    for record in records:
        assert record["kind"] == "recipe_study" and record["budget"] == {"steps": 2} and record["cpu"]
        assert sorted(record["runs"]) == ["0", "1"] and all(run["steps"] == 2 for run in record["runs"].values())
        assert set(record["summary"]) == {"fid", "kid", "ssim", "psnr"}
        assert all(value["spread"] >= 0 for value in record["summary"].values())
    weights = {r["candidate"]: {run["weights"] for run in r["runs"].values()} for r in records}
    assert weights == {"l1_10": {"generator.safetensors"}, "l1_10+ema": {"generator_eval.safetensors"}}
    assert "losses.1.weight=10" in records[0]["sets"] and "train.ema={decay: 0.999}" in records[1]["sets"]
    table = subprocess.run([sys.executable, str(SCRIPT), "--table", "--results", str(tmp_path / "study.jsonl")],
                           capture_output=True, text=True, timeout=60)
    assert table.returncode == 0 and table.stdout.count("| full 256, val 1..2 | 2 steps |") == 2

    # A third seed later: the two runs already in --out are kept, scored again, not trained again
    *_, plain, averaged = run_study(write_recipe, fake_data_root, tmp_path, 10, "--candidates", "l1_10", "--steps", "2",
                                    "--with-ema", "--jobs", "2", "--seeds", "0", "1", "2")
    assert sorted(plain["runs"]) == ["0", "1", "2"]
    assert [plain["runs"][seed]["seconds"] is None for seed in "012"] == [True, True, False]
    assert plain["runs"]["0"]["metrics"] == records[0]["runs"]["0"]["metrics"]
    assert averaged["runs"]["1"]["metrics"] == records[1]["runs"]["1"]["metrics"]


@pytest.mark.parametrize("arguments, message", [
    (["--steps", "0"], "the budget must be positive"),
    (["--steps", "2", "--seeds", "0"], "two or more seeds"),
    (["--minutes", "1", "--with-ema"], "--with-ema is for equal steps"),
    (["--steps", "2", "--jobs", "0"], "--jobs must be 1 or more"),
    ([], "give a budget"),
])
def test_bad_arguments_are_one_line(arguments, message):
    done = subprocess.run([sys.executable, str(SCRIPT), *arguments], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr


@pytest.mark.slow
def test_equal_wall_clock_stops_each_run_by_its_time_budget(fake_data_root, write_recipe, tmp_path):
    (record,) = run_study(write_recipe, fake_data_root, tmp_path, 100000, "--candidates", "pix2pix", "--minutes", "0.02")
    assert record["budget"] == {"minutes": 0.02} and record["jobs"] == 1
    for seed in ("0", "1"):
        stop = [json.loads(line) for line in (tmp_path / "runs" / f"pix2pix-seed{seed}" / "log.jsonl").read_text().splitlines()
                if "time_budget" in line]
        assert stop and stop[-1]["time_budget"]["budget_s"] == 1.2 and stop[-1]["time_budget"]["stopped"]
        assert record["runs"][seed]["steps"] == stop[-1]["step"] >= 1


def load_study_module():
    spec = importlib.util.spec_from_file_location("recipe_study", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are made
    spec.loader.exec_module(module)
    return module


STUDY = load_study_module()


@pytest.mark.parametrize("screen", [False, True], ids=["full", "screen"])
@pytest.mark.parametrize("name", sorted(STUDY.CANDIDATES))
def test_every_candidate_is_a_valid_recipe(name, screen):
    candidate = STUDY.CANDIDATES[name]
    sets = [*STUDY.budget_sets(steps=None, minutes=15), *STUDY.candidate_sets(candidate, screen)]  # fit needs a time budget
    recipe = Recipe.from_file(find_recipe(candidate.recipe), sets)
    assert recipe.data.crop_size == (STUDY.SCREEN_SIZE if screen else 256)
