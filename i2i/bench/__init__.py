"""``i2i bench``: speed (training and inference throughput) and quality (FID, KID, SSIM,
PSNR) on pinned protocols, recorded as JSON lines under benchmarks/results/."""

from pathlib import Path

RESULTS_DIR = Path("benchmarks") / "results"

# How generators are scored during training and by default: as the pix2pix reference tests
# (batch statistics and active dropout).
EVALUATION_MODE = "train"

# Square matmul sizes `i2i bench speed` times for the machine's peak (the best median counts).
PEAK_SIZES = (1024, 2048, 4096)
