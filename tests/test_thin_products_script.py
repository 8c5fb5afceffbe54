"""benchmarks/thin_products.py runs end to end: every thin layer of the flagship's U-Net in
each of its three forms, and their sums."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_thin_products_times_every_thin_layer_in_each_form():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "thin_products.py"), "--rounds", "1",
                           "--calls", "1", "--dtype", "fp32"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    layers = [line for line in lines if line.strip().startswith("width")]
    # U-Net 256 at batch 1: the 4 encoder and 4 decoder convolutions over at most 64 positions
    assert len(layers) == 8, done.stdout
    for line in layers:
        assert all(form in line for form in ("onednn", "matmul fp32", "matmul cast", "fastest:")), line
    assert lines[-1].strip().startswith("sum: onednn") and "autocast fp32" in lines[0]
