"""benchmarks/readme_picture.py: the README's picture from a run's sample grids."""

import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from i2i.visual import save_grid

from conftest import ROOT


def test_picture_rows_are_input_each_step_then_target(tmp_path):
    run = tmp_path / "run"
    inputs, targets = torch.full((4, 3, 8, 8), -1.0), torch.full((4, 3, 8, 8), 1.0)
    for step, value in ((10, -0.5), (20, 0.5)):
        save_grid([inputs, torch.full((4, 3, 8, 8), value), targets], run / "samples" / f"step_{step:08d}.png")
    out = tmp_path / "picture.png"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_picture.py"), str(run), "--steps", "10", "20",
                           "--rows", "2", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    picture = np.asarray(Image.open(out))
    assert picture.shape == (2 * 8 + 2, 4 * 8 + 3 * 2, 3)
    # the first pixel of each tile across a row: input, step 10, step 20, target
    assert [int(picture[0, column * 10, 0]) for column in range(4)] == [0, 64, 191, 255]
    missing = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_picture.py"), str(run), "--steps", "30",
                              "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert missing.returncode != 0 and "no grid for step(s) [30]" in missing.stderr


def test_compare_rows_are_input_each_run_then_target(fake_data_root, write_recipe, tmp_path):
    import io

    from rich.console import Console

    from conftest import tiny_recipe
    from i2i.run import train_from_recipe

    recipe = write_recipe(tiny_recipe(data={"dataset": {"name": "aligned"}, "root": str(fake_data_root), "num_workers": 0},
                                      train={"max_steps": 1, "tensorboard": False, "engine_probe": False}))
    run = tmp_path / "run"
    train_from_recipe(recipe, [], run, False, Console(file=io.StringIO()))
    script, out = str(ROOT / "benchmarks" / "readme_picture.py"), tmp_path / "compare.png"
    done = subprocess.run([sys.executable, script, "--compare", str(run), str(run), "--data", str(fake_data_root),
                           "--images", "2", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    picture = np.asarray(Image.open(out))
    assert picture.shape == (2 * 256 + 2, 4 * 256 + 3 * 2, 3)  # val 2 and 1 at the protocol's 256
    runs = picture[:, 258:2 * 258 - 2], picture[:, 2 * 258:3 * 258 - 2]
    assert np.array_equal(*runs)  # one run twice: the default output is deterministic
    missing = subprocess.run([sys.executable, script, "--compare", str(run), "--data", str(fake_data_root), "--images", "9",
                              "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no val image 9" in missing.stderr
