"""Is the default output the best the run can give? Every generator mode, two seeds.

Trains the flagship recipe on ``--data`` (train 1..300 of the maps set) with every seed
of ``--seeds``, keeps a checkpoint at each of ``--steps``, and scores val 1..``--limit``
(never the training split) with bench quality's protocol, in the generator modes of
``i2i.modes`` (eval: stored statistics; instance: each image's own statistics; train:
those and dropout, the reference's test), for three sets of weights of the same checkpoint:

- ``default``: the checkpoint's inference weights (``generator_eval.safetensors``: the
  averaged generator where ``train.ema`` is on, BatchNorm statistics recomputed), in
  eval and instance mode;
- ``trained``: the trained weights with the running statistics they were trained with
  (``generator.safetensors``), in every mode;
- ``no_ema``: the trained weights with BatchNorm statistics recomputed here as the run
  does (``train.eval_bn_batches``), i.e. the default output had ``train.ema`` been off.

One ``quality_modes`` record per step goes to ``benchmarks/results/quality.jsonl``: each
seed's FID, KID, SSIM and PSNR per weights and mode, their mean, and the seed-to-seed
spread (max - min over seeds), the noise any difference must exceed.

Quality per hour (``--wall-clock MINUTES``): for each seed, one run per engine of
``--engines`` (default ``reference`` and ``fast``, the default) trains side by side, so
that both see the same machine, until the wall-clock is up; each is then stopped
(SIGINT: the run saves a checkpoint and leaves) and its last checkpoint scored as
above. One ``quality_per_hour`` record: per engine the steps reached and the scores,
their mean and spread over seeds.

    .venv/bin/python benchmarks/quality_modes.py --steps 1500 3000        # CPU: hours
    .venv/bin/python benchmarks/quality_modes.py --steps 2 --limit 4      # does it work? (minutes)
    .venv/bin/python benchmarks/quality_modes.py --steps 1500 --score-only --out DIR   # runs already trained
    .venv/bin/python benchmarks/quality_modes.py --wall-clock 60          # reference vs default, an hour each

What a user gets (``--translate-check CHECKPOINT``): val 1..``--limit``'s inputs, resized
to the protocol's 256x256, go through the ``i2i translate`` command at its defaults, and
its saved images are scored against the targets; one ``quality_translate`` record.

``--set key=value`` changes the recipe of every run (e.g. ``--set train.ema=null``);
``--engine-set fast:key=value`` that of one engine's runs alone (with ``--wall-clock``).
"""

from __future__ import annotations

import argparse
import os
import signal
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

from i2i.bench.inception import inception_extractor  # noqa: E402
from i2i.bench.metrics import QualityMeter  # noqa: E402
from i2i.bench.quality import evaluate, protocol_dataset  # noqa: E402
from i2i.bench.records import append_record, environment  # noqa: E402
from i2i.engine.build import build_dataset, resolve_device  # noqa: E402
from i2i.engine.checkpoint import checkpoint_step, latest_checkpoint  # noqa: E402
from i2i.engine.inference import GENERATOR_FILE, INFERENCE_FILE, load_generator, resolve_generator_file  # noqa: E402
from i2i.engine.precise_bn import fixed_batches, recompute_batchnorm  # noqa: E402
from i2i.modes import DEFAULT_MODE, MODES  # noqa: E402
from i2i.visual import to_uint8  # noqa: E402

METRICS = ("fid", "kid", "ssim", "psnr")
# weights -> modes scored. Train mode differs from instance mode by dropout alone: on the
# trained weights only. Quality per hour scores each run's published output (the trained
# weights in train mode) and what translate gives by default.
MODES_SCORES = {"trained": MODES, "default": ("eval", "instance"), "no_ema": ("eval",)}
PER_HOUR_SCORES = {"trained": tuple(dict.fromkeys(("train", DEFAULT_MODE))), "default": (DEFAULT_MODE,)}


def train(recipe: Path, data: Path, seed: int, steps: list[int], device: str, overrides: list[str], out: Path) -> float:
    """One ``i2i run`` with a checkpoint at every step of ``steps``; its seconds."""
    sets = [f"data.root={data}", "data.download=false", f"train.seed={seed}", f"train.max_steps={max(steps)}",
            f"train.device={device}", f"train.log_every={max(1, min(100, min(steps)))}",
            f"train.checkpoint_every={min(steps)}", "train.checkpoint_each_epoch=false",
            f"train.sample_every={min(steps)}", f"train.keep_checkpoints={max(steps) // min(steps)}", *overrides]
    arguments = [arg for value in sets for arg in ("--set", value)]
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "i2i", "run", str(recipe), *arguments, "--out", str(out), "--quiet",
                    "--no-tensorboard"], cwd=ROOT, check=True)
    return time.perf_counter() - started


def train_for(recipe: Path, data: Path, seed: int, engines: list[str], minutes: float, device: str,
              overrides: list[str], engine_overrides: dict[str, list[str]], out: Path) -> dict[str, Path]:
    """One ``i2i run`` per engine, side by side for ``minutes``, then stopped; engine -> its
    last checkpoint. The engines split the cores (OMP_NUM_THREADS), rather than fight over them.
    ``engine_overrides``: engine -> settings of its run alone."""
    sets = [f"data.root={data}", "data.download=false", f"train.seed={seed}", f"train.device={device}",
            "train.log_every=100", "train.sample_every=100000", "train.checkpoint_every=100000",
            "train.checkpoint_each_epoch=false", *overrides]
    arguments = [arg for value in sets for arg in ("--set", value)]
    threads = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // len(engines)))}
    own = {engine: [arg for value in engine_overrides.get(engine, []) for arg in ("--set", value)] for engine in engines}
    runs = {engine: subprocess.Popen([sys.executable, "-m", "i2i", "run", str(recipe), *arguments, *own[engine],
                                      "--set", f"train.engine={engine}", "--out", str(out / f"{engine}-seed{seed}"),
                                      "--quiet", "--no-tensorboard"], cwd=ROOT, env=threads) for engine in engines}
    time.sleep(minutes * 60)
    for process in runs.values():
        process.send_signal(signal.SIGINT)  # the run saves a checkpoint at the step it is in, then leaves
    for process in runs.values():
        process.wait()
    return {engine: latest_checkpoint(out / f"{engine}-seed{seed}") for engine in engines}


def per_hour(args: argparse.Namespace, device: torch.device, out: Path) -> None:
    engine_overrides = {}
    for setting in args.engine_overrides:
        engine, _, value = setting.partition(":")
        engine_overrides.setdefault(engine, []).append(value)
    checkpoints = {}
    for seed in args.seeds:
        print(f"training {' and '.join(args.engines)} side by side, seed {seed}, {args.wall_clock} minutes", flush=True)
        checkpoints[seed] = train_for(args.recipe, args.data, seed, args.engines, args.wall_clock, str(device),
                                      args.overrides, engine_overrides, out)
    extractor = inception_extractor(device)
    runs = {engine: {seed: {"steps": checkpoint_step(checkpoints[seed][engine]),
                            "scores": score_checkpoint(checkpoints[seed][engine], args.data, args.limit, device, extractor,
                                                       PER_HOUR_SCORES)}
                     for seed in args.seeds} for engine in args.engines}
    record = {**environment(device), "kind": "quality_per_hour", "recipe": args.recipe.stem, "data": str(args.data),
              "split": "val", "limit": args.limit, "minutes": args.wall_clock, "seeds": args.seeds,
              "overrides": args.overrides, "engine_overrides": engine_overrides, "runs": runs,
              "summary": {engine: summary({seed: run["scores"] for seed, run in by_seed.items()})
                          for engine, by_seed in runs.items()}}
    append_record(args.results, record)
    for engine, by_seed in runs.items():
        scores = record["summary"][engine]
        published, default = scores["trained"]["train"]["fid"], scores.get("default", scores["trained"])[DEFAULT_MODE]["fid"]
        print(f"{engine}: steps {[run['steps'] for run in by_seed.values()]}, published output (train mode) FID "
              f"{published['mean']:.1f} (spread {published['spread']:.1f}), translate's default ({DEFAULT_MODE} mode) FID "
              f"{default['mean']:.1f} (spread {default['spread']:.1f})")
    print(f"appended to {args.results}")


def score_checkpoint(checkpoint: Path, data: Path, limit: int, device: torch.device, extractor,
                     plan: dict[str, tuple[str, ...]] | None = None) -> dict:
    """weights -> mode -> metrics, for one checkpoint folder (see the module docstring);
    ``plan`` (weights -> modes) scores only those."""
    plan = plan or MODES_SCORES
    trained, recipe, _ = load_generator(checkpoint / GENERATOR_FILE, device)
    val = protocol_dataset(recipe, data, "val")
    real = None

    def score(generator, mode: str) -> dict:
        nonlocal real
        meter = QualityMeter(extractor)
        metrics = evaluate(generator, val, meter, mode, device, limit, recipe.train.seed, real)
        real = meter.real_features_all()
        return {m: metrics[m] for m in METRICS}

    scores = {"trained": {mode: score(trained, mode) for mode in plan["trained"]}}
    if (checkpoint / INFERENCE_FILE).is_file():
        default, _, _ = load_generator(checkpoint / INFERENCE_FILE, device)
        scores["default"] = {mode: score(default, mode) for mode in plan["default"]}
        if plan.get("no_ema") and recipe.train.ema is not None and recipe.train.eval_bn_batches:
            training_set = build_dataset(recipe.variant(**{"data.root": str(data)}), "train", train=True)
            training_set.prepare()
            batches = fixed_batches(training_set, recipe.train.eval_bn_batches, recipe.train.batch_size, recipe.train.seed)
            recompute_batchnorm(trained, batches, recipe.train.eval_bn_dropout)
            scores["no_ema"] = {"eval": score(trained, "eval")}
    return scores


def translate_check(args: argparse.Namespace, device: torch.device) -> None:
    """Score what ``i2i translate`` writes, at its default mode, for the checkpoint given."""
    checkpoint = args.translate_check
    _, recipe, _ = load_generator(resolve_generator_file(checkpoint), device)
    val = protocol_dataset(recipe, args.data, "val")
    count = min(args.limit, len(val))
    with tempfile.TemporaryDirectory(prefix="i2i-translate-check-") as folder:
        inputs, outputs = Path(folder) / "inputs", Path(folder) / "outputs"
        inputs.mkdir()
        for index in range(count):
            Image.fromarray(to_uint8(val[index]["input"][None])[0]).save(inputs / f"{index:05d}.png")
        subprocess.run([sys.executable, "-m", "i2i", "translate", "--checkpoint", str(checkpoint), "--input", str(inputs),
                        "--output", str(outputs), "--device", str(device)], cwd=ROOT, check=True)
        meter = QualityMeter(inception_extractor(device))
        for index in range(count):
            with Image.open(next(outputs.glob(f"{index:05d}.*"))) as image:
                pixels = torch.from_numpy(np.asarray(image.convert("RGB"), np.float32)).permute(2, 0, 1)[None]
            meter.update(pixels / 127.5 - 1, val[index]["target"][None])
        metrics = meter.compute()
    record = {**environment(device), "kind": "quality_translate", "recipe": recipe.name, "checkpoint": str(checkpoint),
              "data": str(args.data), "split": "val", "limit": count, "command": "i2i translate (default mode)",
              "metrics": {m: metrics[m] for m in METRICS}}
    append_record(args.results, record)
    print("i2i translate at its defaults: " + "  ".join(f"{m} {metrics[m]:.4g}" for m in METRICS))


def summary(per_seed: dict[int, dict]) -> dict:
    """Mean and spread over seeds of every weights/mode/metric the seeds share."""
    first = next(iter(per_seed.values()))
    result = {}
    for weights, modes in first.items():
        for mode, metrics in modes.items():
            for metric in metrics:
                values = [scores[weights][mode][metric] for scores in per_seed.values()]
                result.setdefault(weights, {}).setdefault(mode, {})[metric] = {
                    "mean": statistics.mean(values), "spread": max(values) - min(values)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "pix2pix_maps.yaml")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maps")
    parser.add_argument("--steps", type=int, nargs="+", default=[1500], help="checkpoints scored (multiples of the first)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--limit", type=int, default=100, help="val images scored (val 1..N)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--score-only", action="store_true", help="score the runs already in --out")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "quality.jsonl")
    parser.add_argument("--wall-clock", type=float, metavar="MINUTES",
                        help="quality per hour: train each of --engines side by side this long, then score")
    parser.add_argument("--engines", nargs="+", default=["reference", "fast"], help="with --wall-clock")
    parser.add_argument("--engine-set", dest="engine_overrides", action="append", default=[], metavar="ENGINE:KEY=VALUE",
                        help="with --wall-clock: a setting for one engine's runs alone")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes scored (default: every one)")
    parser.add_argument("--translate-check", type=Path, metavar="CHECKPOINT",
                        help="score what `i2i translate` gives for CHECKPOINT at its defaults")
    args = parser.parse_args()
    steps = sorted(args.steps)
    if len(args.seeds) < 2:
        parser.error("--seeds needs two or more seeds: the spread between them is the noise")
    if any(step % steps[0] for step in steps):
        parser.error("every --steps value must be a multiple of the first (checkpoints are written every first steps)")
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        print(f"quality modes skipped: no train/ and val/ in {args.data} (give --data)")
        return
    if args.score_only and not args.out:
        parser.error("--score-only needs --out, the folder of the runs")
    device = resolve_device(args.device)
    if args.translate_check:
        translate_check(args, device)
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="i2i-quality-modes-"))
    if args.wall_clock:
        per_hour(args, device, out)
        return
    seconds = {}
    for seed in args.seeds:
        run = out / f"seed{seed}"
        if not args.score_only:
            print(f"training seed {seed}, {steps[-1]} steps -> {run}", flush=True)
            seconds[seed] = train(args.recipe, args.data, seed, steps, str(device), args.overrides, run)
    extractor = inception_extractor(device)
    plan = {weights: tuple(mode for mode in modes if mode in args.modes) for weights, modes in MODES_SCORES.items()}
    for step in steps:
        per_seed = {}
        for seed in args.seeds:
            per_seed[seed] = score_checkpoint(out / f"seed{seed}" / "checkpoints" / f"step_{step:08d}", args.data,
                                              args.limit, device, extractor, plan)
            for weights, modes in per_seed[seed].items():
                for mode, metrics in modes.items():
                    print(f"step {step} seed {seed} {weights} {mode}: " + "  ".join(f"{m} {metrics[m]:.4g}" for m in METRICS),
                          flush=True)
        record = {**environment(device), "kind": "quality_modes", "recipe": args.recipe.stem, "data": str(args.data),
                  "split": "val", "limit": args.limit, "steps_trained": step, "seeds": args.seeds,
                  "overrides": args.overrides, "modes": args.modes, "training_seconds": seconds or None, "runs": per_seed,
                  "summary": summary(per_seed)}
        append_record(args.results, record)
        fid = record["summary"]
        print(f"step {step}: " + "  ".join(f"{weights} {mode} FID {values['fid']['mean']:.1f} (spread {values['fid']['spread']:.1f})"
                                            for weights, modes in fid.items() for mode, values in modes.items()), flush=True)
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
