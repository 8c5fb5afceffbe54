"""The line of ``benchmarks/results/gpu.jsonl`` for one run of ``benchmarks/gpu_check.sh``.

On the GPU (the check runs these two):

    python3 benchmarks/gpu_record.py translate RUN --data DATA --out $OUT/val_train
    python3 benchmarks/gpu_record.py record --out $OUT/gpu.json --graph-equals-eager true \\
        --steady $OUT/steady.json --run RUN --commit COMMIT

``translate``: val 1..100 as ``i2i bench quality --mode train`` translates them (the protocol's
256x256 bicubic inputs, dropout seeded from the recipe, batch statistics, one image a
forward pass), saved as PNGs (uint8 as the protocol quantizes). ``record``: every field but
the quality, from the check's outputs; a figure whose section did not finish is null.

Here, on the PNGs brought back (FID needs the Inception weights, which the GPU lacks):

    .venv/bin/python benchmarks/gpu_record.py score OUT --data ../shared/data/maps

``score``: FID, KID, SSIM and PSNR of OUT/val_train/*.png against the val targets, with
``i2i bench quality``'s meter, into ``long_run_quality``; appends the line to the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from i2i.bench.metrics import QualityMeter  # noqa: E402
from i2i.bench.quality import evaluate, protocol_dataset  # noqa: E402
from i2i.bench.records import append_record, environment  # noqa: E402
from i2i.bench.steady import log_window_times, steadiness  # noqa: E402
from i2i.engine.build import resolve_device  # noqa: E402
from i2i.engine.checkpoint import checkpoint_step  # noqa: E402
from i2i.engine.inference import load_generator  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402
from i2i.report import read_log  # noqa: E402
from quality_check import SavingMeter  # noqa: E402  (benchmarks/, the script's own folder)

QUALITY = ("fid", "kid", "ssim", "psnr")


def translate(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    generator, recipe, _ = load_generator(args.run, device)
    dataset = protocol_dataset(recipe, args.data, "val")
    metrics = evaluate(generator, dataset, SavingMeter(args.out, suffix=".png"), "train", device, args.limit, recipe.train.seed)
    print(json.dumps({"translated": metrics["images"], "ssim": metrics["ssim"], "psnr": metrics["psnr"]}))


def long_run(run: Path) -> dict:
    """Steps (the last checkpoint's: SIGTERM stopped the run between two log records), steps/s
    from the loop's start to its last log record (checkpoints included), and the steadiness
    of its 100-step windows."""
    saved = [checkpoint_step(path) for path in (run / "checkpoints").glob("step_*")]
    records = [r for r in read_log(run) if "steps_per_s" in r]  # the kill may leave a half-written last line
    if not records:
        return {"long_run_steps": None, "long_run_steps_per_s": None, "long_run_steady_min_over_median": None}
    seconds, last = 0.0, 0
    for record in records:
        seconds += (record["step"] - last) / record["steps_per_s"]
        last = record["step"]
    times = log_window_times(records)
    return {"long_run_steps": max([last, *saved]), "long_run_steps_per_s": round(last / seconds, 2),
            "long_run_steady_min_over_median": round(steadiness(times), 4) if len(times) > 1 else None}


def record(args: argparse.Namespace) -> None:
    text = args.steady.read_text().strip() if args.steady.is_file() else ""
    steady = json.loads(text) if text else {}  # empty where the section did not finish
    env = environment(resolve_device(args.device))
    line = {"time": env["time"], "device_name": env["device_name"], "torch": env["torch"],
            "graph_equals_eager": args.graph_equals_eager == "true",
            "steady_min_over_median": steady.get("steady_min_over_median"),
            "steady_window_s": steady.get("window_s"),
            **long_run(args.run), "long_run_quality": None, "commit": args.commit}
    args.out.write_text(json.dumps(line) + "\n")
    print(json.dumps(line))


def score(args: argparse.Namespace) -> None:
    from i2i.bench.inception import inception_extractor

    line = json.loads((args.out_dir / "gpu.json").read_text())
    images = sorted((args.out_dir / "val_train").glob("*.png"), key=lambda p: int(p.stem))
    dataset = protocol_dataset(Recipe.from_file(args.recipe), args.data, "val")
    meter = QualityMeter(inception_extractor(torch.device("cpu")))
    for index, path in enumerate(images):
        if path.stem != str(index + 1):
            raise SystemExit(f"{path}: the outputs are not val 1..{len(images)}")
        fake = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float() / 127.5 - 1
        meter.update(fake, dataset[index]["target"][None])
    metrics = meter.compute()
    line["long_run_quality"] = {"val": {key: metrics[key] for key in QUALITY}, "images": len(images), "mode": "train"}
    append_record(args.results, line)
    print(json.dumps(line))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("translate")
    one.add_argument("run", type=Path)
    one.add_argument("--data", type=Path, required=True)
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--limit", type=int, default=100)
    one.add_argument("--device", default="auto")
    one = commands.add_parser("record")
    one.add_argument("--out", type=Path, required=True)
    one.add_argument("--graph-equals-eager", choices=["true", "false"], required=True)
    one.add_argument("--steady", type=Path, required=True, help="benchmarks/steady_input.py's JSON line")
    one.add_argument("--run", type=Path, required=True, help="the long run's directory")
    one.add_argument("--commit", required=True)
    one.add_argument("--device", default="auto")
    one = commands.add_parser("score")
    one.add_argument("out_dir", type=Path, help="the device call's $OUT, brought back")
    one.add_argument("--data", type=Path, required=True)
    one.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "pix2pix_maps.yaml")
    one.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "gpu.jsonl")
    args = parser.parse_args()
    {"translate": translate, "record": record, "score": score}[args.command](args)


if __name__ == "__main__":
    main()
