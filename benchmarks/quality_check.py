"""Does the fast engine train as well as the reference? A standing check.

Trains the flagship recipe ``--steps`` steps on the maps data with ``train.engine:
reference`` and ``train.engine: fast``, each with every seed of ``--seeds`` (the
same seeds for both), scores every run with ``i2i bench quality`` on val 1..100
(FID, KID, SSIM, PSNR; generator in train mode, the reference's test), and appends
one ``quality_check`` record to ``benchmarks/results/quality.jsonl``:

- ``noise``: run-to-run noise, the largest spread of each metric between seeds of
  one engine (two seeds of each by default);
- ``difference``: |mean over seeds of fast - mean of reference| per metric;
- ``verdict``: ``within noise`` when the FID difference is at most the FID noise.

    .venv/bin/python benchmarks/quality_check.py --steps 1500            # CPU: hours
    .venv/bin/python benchmarks/quality_check.py --steps 2 --limit 4     # does it work? (minutes)

Each run is its own ``i2i run`` process. Without the data folder it says so and exits 0.

Where the FID network cannot go (a lent GPU machine: no download, 64 MiB carried),
``--save-translations DIR`` trains, computes SSIM and PSNR, and keeps each run's val
outputs as lossless WebP (the exact uint8 images bench quality scores) with a
``runs.json``; ``--score-translations DIR`` later scores them here, FID and KID
included, and appends the record.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from i2i.bench.metrics import QualityMeter  # noqa: E402
from i2i.bench.quality import evaluate, protocol_dataset  # noqa: E402
from i2i.bench.records import append_record, environment, read_records  # noqa: E402
from i2i.engine.build import resolve_device  # noqa: E402
from i2i.engine.inference import load_generator  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402
from i2i.visual import to_uint8  # noqa: E402

METRICS = ("fid", "kid", "ssim", "psnr")
ENGINES = ("reference", "fast")


def i2i(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "i2i", *args], cwd=ROOT, check=True)


def start_training(recipe: Path, data: Path, engine: str, seed: int, steps: int, device: str, out: Path) -> subprocess.Popen:
    """One ``i2i run``, started."""
    sets = [f"data.root={data}", "data.download=false", f"train.engine={engine}", f"train.seed={seed}",
            f"train.max_steps={steps}", f"train.device={device}", f"train.log_every={max(1, min(100, steps))}",
            f"train.checkpoint_every={steps}", f"train.sample_every={steps}"]
    arguments = [arg for value in sets for arg in ("--set", value)]
    return subprocess.Popen([sys.executable, "-m", "i2i", "run", str(recipe), *arguments, "--out", str(out), "--quiet",
                             "--no-tensorboard"], cwd=ROOT)


def finish_training(process: subprocess.Popen, out: Path, started: float) -> dict:
    """Wait for a run; its time and its training rate from the run's log."""
    if process.wait():
        raise SystemExit(f"training into {out} failed (exit status {process.returncode})")
    rates = [record["steps_per_s"] for record in map(json.loads, (out / "log.jsonl").read_text().splitlines())
             if "steps_per_s" in record]
    return {"seconds": time.perf_counter() - started, "steps_per_s_last_log": rates[-1] if rates else None}


def score(run: Path, data: Path, limit: int, device: str, scratch: Path) -> dict:
    results = scratch / f"{run.name}.jsonl"
    i2i("bench", "quality", "--checkpoint", str(run), "--data", str(data), "--limit", str(limit), "--mode", "train",
        "--device", device, "--results", str(results))
    (record,) = read_records(results)
    return record


class SavingMeter(QualityMeter):
    """SSIM and PSNR as bench quality computes them; every output also saved, lossless, as
    N.webp (or N.png with ``suffix=".png"``)."""

    def __init__(self, folder: Path, suffix: str = ".webp"):
        super().__init__(extractor=None)
        self.folder, self.suffix = folder, suffix
        folder.mkdir(parents=True, exist_ok=True)

    def update(self, fake: torch.Tensor, real: torch.Tensor, real_features: torch.Tensor | None = None) -> None:
        super().update(fake, real)
        for image in to_uint8(fake):
            Image.fromarray(image).save(self.folder / f"{len(self.ssim)}{self.suffix}", lossless=True)


def translate(run: Path, data: Path, limit: int, device: torch.device, folder: Path) -> dict:
    """bench quality's translation of val 1..limit, saved to ``folder``; its SSIM and PSNR."""
    generator, recipe, _ = load_generator(run, device)
    dataset = protocol_dataset(recipe, data, "val")
    return evaluate(generator, dataset, SavingMeter(folder), "train", device, limit, recipe.train.seed)


def score_saved(folder: Path, recipe: Recipe, data: Path, limit: int) -> dict:
    """FID, KID, SSIM and PSNR of saved outputs against the protocol's val targets."""
    from i2i.bench.inception import inception_extractor

    dataset = protocol_dataset(recipe, data, "val")
    meter = QualityMeter(inception_extractor(torch.device("cpu")))
    for index in range(limit):
        image = np.array(Image.open(folder / f"{index + 1}.webp").convert("RGB"))
        fake = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1  # exact back to uint8
        meter.update(fake, dataset[index]["target"][None])
    return meter.compute()


def verdict(runs: dict[str, list[dict]]) -> dict:
    """Noise: the largest spread of each metric between the seeds of one engine; the verdict
    compares the engines' mean FIDs against the FID noise."""
    if min(len(runs[engine]) for engine in ENGINES) < 2:
        return {"verdict": "not enough runs: two seeds of each engine are needed for the noise"}
    values = {engine: {m: [run["metrics"][m] for run in runs[engine]] for m in METRICS} for engine in ENGINES}
    noise = {m: max(max(values[e][m]) - min(values[e][m]) for e in ENGINES) for m in METRICS}
    difference = {m: abs(statistics.mean(values["fast"][m]) - statistics.mean(values["reference"][m])) for m in METRICS}
    within = difference["fid"] <= noise["fid"]
    return {"values": values, "noise": noise, "difference": difference,
            "verdict": "within noise" if within else "outside noise",
            "rule": "|mean FID fast - mean FID reference| <= the largest FID spread between seeds of one engine"}


def record_of(env: dict, args: argparse.Namespace, runs: dict[str, list[dict]]) -> dict:
    return {**env, "kind": "quality_check", "recipe": args.recipe.stem, "data": str(args.data), "split": "val",
            "limit": args.limit, "mode": "train", "steps_trained": args.steps, "seeds": args.seeds,
            "parallel": args.parallel, "runs": runs, **verdict(runs)}


def finish(record: dict, results: Path) -> None:
    append_record(results, record)
    if "noise" not in record:
        print(f"{record['verdict']}; appended to {results}")
        return
    print(f"FID noise between seeds {record['noise']['fid']:.2f}, fast - reference {record['difference']['fid']:.2f}: "
          f"{record['verdict']}; appended to {results}")


def score_translations(folder: Path, args: argparse.Namespace) -> None:
    """The second half of --save-translations: score the saved outputs here, append the record."""
    saved = json.loads((folder / "runs.json").read_text())
    recipe = Recipe.from_file(args.recipe)
    runs = {engine: [] for engine in ENGINES}
    for engine, entries in saved["runs"].items():
        for entry in entries:
            metrics = score_saved(folder / f"{engine}-seed{entry['seed']}", recipe, args.data, saved["limit"])
            runs[engine].append({**entry, "metrics": {m: metrics[m] for m in METRICS}, "images": metrics["images"]})
    args.steps, args.seeds, args.limit, args.parallel = saved["steps"], saved["seeds"], saved["limit"], saved["parallel"]
    scored_on = environment(torch.device("cpu"))
    finish({**record_of(saved["environment"], args, runs), "fid_kid_scored_on": scored_on["device_name"]}, args.results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "pix2pix_maps.yaml")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maps")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--limit", type=int, default=100, help="val images scored (val 1..N)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quality.jsonl")
    parser.add_argument("--save-translations", type=Path, metavar="DIR",
                        help="score SSIM/PSNR only and keep the outputs in DIR for --score-translations")
    parser.add_argument("--score-translations", type=Path, metavar="DIR", help="score outputs saved by --save-translations")
    parser.add_argument("--parallel", action="store_true",
                        help="train all runs at once (a large GPU: quality is unchanged, the recorded times are shared)")
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds needs two or more seeds: the noise is the spread between them")
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        print(f"quality check skipped: no train/ and val/ in {args.data} (give --data)")
        return
    if args.score_translations:
        score_translations(args.score_translations, args)
        return

    device = resolve_device(args.device)
    out = args.out or Path(tempfile.mkdtemp(prefix="i2i-quality-check-"))
    runs: dict[str, list[dict]] = {engine: [] for engine in ENGINES}
    order = [(seed, engine) for seed in args.seeds for engine in ENGINES]  # alternating: a slowing machine slows both
    for group in [order] if args.parallel else [[run] for run in order]:
        started = {}
        for seed, engine in group:
            run = out / f"{engine}-seed{seed}"
            print(f"training {engine}, seed {seed}, {args.steps} steps -> {run}", flush=True)
            started[seed, engine] = (run, time.perf_counter(),
                                     start_training(args.recipe, args.data, engine, seed, args.steps, str(device), run))
        for (seed, engine), (run, since, process) in started.items():
            entry = {"seed": seed, **finish_training(process, run, since)}
            if args.save_translations:  # scored again, FID and KID too, by --score-translations
                metrics = translate(run, args.data, args.limit, device, args.save_translations / run.name)
                entry.update(ssim_here=metrics["ssim"], psnr_here=metrics["psnr"])
            else:
                metrics = score(run, args.data, args.limit, str(device), out)["metrics"]
                entry.update(metrics={m: metrics[m] for m in METRICS}, images=metrics["images"])
            runs[engine].append(entry)
            print(f"  {engine} seed {seed}: " + "  ".join(f"{m} {metrics[m]:.4g}" for m in METRICS if m in metrics),
                  flush=True)
            if args.save_translations:  # after every run: a check cut short keeps the runs it finished
                saved = {"environment": environment(device), "steps": args.steps, "seeds": args.seeds,
                         "limit": args.limit, "parallel": args.parallel, "runs": runs}
                (args.save_translations / "runs.json").write_text(json.dumps(saved, indent=1))

    if args.save_translations:
        print(f"outputs and runs.json in {args.save_translations}: score them with --score-translations")
        return
    finish(record_of(environment(device), args, runs), args.results)


if __name__ == "__main__":
    main()
