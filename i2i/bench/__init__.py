"""``i2i bench``: speed (training and inference throughput) and quality (FID, KID, SSIM,
PSNR) on pinned protocols, recorded as JSON lines under benchmarks/results/."""

from pathlib import Path

from i2i.modes import DEFAULT_MODE

RESULTS_DIR = Path("benchmarks") / "results"

# How generators are scored during training: as translate gives them by default.
EVALUATION_MODE = DEFAULT_MODE

# Square matmul sizes `i2i bench speed` times for the machine's peak (the best median counts).
PEAK_SIZES = (1024, 2048, 4096)
