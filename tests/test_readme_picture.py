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
