"""Super-resolution check: the PSNR and SSIM of a trained generator next to those of
the bicubic upscale it starts from, on a split of its own recipe's ``degrade`` data.

    python -m i2i.data.sr_eval RUN_DIR [--split val] [--device cpu] [--mode eval|train]

Each image is scored at the recipe's crop size after 8-bit rounding (as a saved
PNG would be); figures are means over images.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from i2i.data.base import DataError
from i2i.engine.build import build_dataset, resolve_device
from i2i.engine.inference import Mode, generator_mode, load_generator
from i2i.visual import quantize


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> [0, 1] floats on the 8-bit grid: torchmetrics' PSNR and SSIM here take data_range=1."""
    return quantize(images).float() / 255.0


@torch.no_grad()
def evaluate(
    checkpoint: Path, split: str = "val", device: str = "cpu", mode: Mode = "eval", batch_size: int = 8
) -> dict[str, float]:
    torch_device = resolve_device(device)
    generator, recipe, _ = load_generator(checkpoint, torch_device)
    if recipe.data.dataset.name != "degrade":
        raise DataError(f"{checkpoint} was trained on {recipe.data.dataset.name!r}; this check needs a degrade recipe")
    dataset = build_dataset(recipe, split, train=False)
    scores = {
        name: (PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)).to(torch_device),
               StructuralSimilarityIndexMeasure(data_range=1.0).to(torch_device))
        for name in ("bicubic", "model")
    }
    with generator_mode(generator, mode):
        for batch in DataLoader(dataset, batch_size=batch_size):
            low, target = batch["input"].to(torch_device), to_unit(batch["target"].to(torch_device))
            for name, images in (("bicubic", low), ("model", generator(low))):
                psnr, ssim = scores[name]
                psnr.update(to_unit(images), target)
                ssim.update(to_unit(images), target)
    result = {"images": len(dataset), "split": split, "mode": mode, "scale": recipe.data.dataset.params["scale"]}
    for name, (psnr, ssim) in scores.items():
        result[f"{name}_psnr"] = float(psnr.compute())
        result[f"{name}_ssim"] = float(ssim.compute())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="run directory, checkpoint folder or generator .safetensors")
    parser.add_argument("--split", default="val")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mode", choices=["eval", "train"], default="eval",
                        help="eval: running BatchNorm statistics; train: batch statistics, as pix2pix tests")
    args = parser.parse_args()
    print(json.dumps(evaluate(args.checkpoint, args.split, args.device, args.mode), indent=2))


if __name__ == "__main__":
    main()
