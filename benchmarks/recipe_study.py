"""The maps recipe study (issue 29): which recipe translates maps -> aerial better than pix2pix?

Each candidate is ``pix2pix_maps`` (or another shipped recipe) with ``--set`` changes, one idea
from the literature after pix2pix at a time or a combination of the ones that helped. Every
candidate trains on the whole train split with each seed of ``--seeds``, one run at a time,
under one budget:

- ``--steps N``: equal steps (the issue's 3000);
- ``--minutes M``: equal wall-clock, through ``train.time_budget`` (the training loop's time;
  start-up excluded), so run it on a quiet machine and compare only records of one session.

Its output is then scored as ``i2i translate`` gives it by default (the checkpoint's inference
weights in the default generator mode) on val 1..``--limit`` with ``i2i bench quality``'s
protocol (FID, KID, SSIM, PSNR), never on the training split. One ``recipe_study`` record per
candidate goes to ``benchmarks/results/recipe_study.jsonl``: each seed's steps, seconds and
metrics, and per metric the mean and the seed spread (max - min).

A run already in ``--out`` with the same recipe and budget, finished, is kept and scored again,
not trained again: a third seed in a later session trains only itself
(``--seeds 0 1 2 --out`` the folder of seeds 0 1).

``--screen`` is the cheap first pass: 128x128 crops (load 143, the U-Net one level shallower)
scored at 128, about a quarter of the work per step. Its figures compare candidates with each
other only, never with the full protocol's.

    .venv/bin/python benchmarks/recipe_study.py --list
    .venv/bin/python benchmarks/recipe_study.py --screen --steps 1500 --candidates pix2pix ema
    .venv/bin/python benchmarks/recipe_study.py --minutes 15 --seeds 0 1 2 --candidates pix2pix maps_plus
    .venv/bin/python benchmarks/recipe_study.py --table            # the records as docs/recipe_study.md's table
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from i2i.bench.inception import inception_extractor  # noqa: E402
from i2i.bench.metrics import QualityMeter  # noqa: E402
from i2i.bench.quality import IMAGE_SIZE, evaluate, protocol_dataset  # noqa: E402
from i2i.bench.records import append_record, environment, read_records  # noqa: E402
from i2i.engine.build import resolve_device  # noqa: E402
from i2i.engine.checkpoint import checkpoint_step, latest_checkpoint  # noqa: E402
from i2i.engine.inference import GENERATOR_FILE, INFERENCE_FILE, load_generator, resolve_generator_file  # noqa: E402
from i2i.modes import DEFAULT_MODE  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402
from i2i.report import read_log  # noqa: E402

METRICS = ("fid", "kid", "ssim", "psnr")
RESULTS = ROOT / "benchmarks" / "results" / "recipe_study.jsonl"
SCREEN_SIZE = 128
SCREEN_DATA = ["data.load_size=143", f"data.crop_size={SCREEN_SIZE}"]
UNET_SCREEN = ["model.generator.params.num_downs=7"]  # 128 / 2**7 = 1, as 256 / 2**8 at full size
EMA = "train.ema={decay: 0.999}"
# maps_plus ships L1 10 since maps_plus_l1_10's record: the candidates recorded before keep the 100 they ran with
L1_100 = "losses.1.weight=100"


@dataclass(frozen=True)
class Candidate:
    why: str
    sets: list[str] = field(default_factory=list)
    recipe: str = "pix2pix_maps"
    screen: list[str] = field(default_factory=lambda: list(UNET_SCREEN))  # extra sets at 128x128


RESNET = ["model.generator={name: resnet, params: {n_blocks: 9, ngf: 64, norm: instance, padding: reflect}}"]
# Batch 4 with the lr scaled by sqrt(4); instance norm, so each image is normalized in training as instance-mode inference does it
BATCH4 = ["train.batch_size=4", "train.lr=0.0004", "model.generator.params.norm=instance"]


def multiscale_fm(ndf: int = 64) -> list[str]:
    return [f"model.discriminator={{name: multiscale, params: {{num_scales: 2, n_layers: 3, ndf: {ndf}, norm: instance}}}}",
            "method.params.feature_matching=10"]


CANDIDATES: dict[str, Candidate] = {
    "pix2pix": Candidate("the published recipe at i2i's defaults: the baseline"),
    "ema": Candidate("EMA of the generator (decay 0.999), the inference weights", [EMA]),
    "l1_10": Candidate("L1 weight 10 instead of 100: less blur, more weight on the GAN", ["losses.1.weight=10"]),
    "l1_decay": Candidate("L1 weight 100 decayed linearly to 10 over the run",
                          ["method.params.reconstruction_decay_to=0.1"]),
    "lsgan": Candidate("least-squares GAN (Mao et al. 2017)", ["losses.0.params.mode=lsgan"]),
    "hinge_sn": Candidate("hinge loss with a spectral-norm PatchGAN (Miyato et al. 2018)",
                          ["losses.0.params.mode=hinge", "model.discriminator.params.spectral_norm=true",
                           "model.discriminator.params.norm=none"]),
    "ttur": Candidate("two time-scales: D's lr 4x G's (Heusel et al. 2017)", ["train.d_lr_ratio=4"]),
    "r1": Candidate("R1 penalty on real pairs, gamma 1 (Mescheder et al. 2018)", ["losses.0.params.r1_gamma=1"]),
    "diffaug": Candidate("DiffAugment for D: color, translation, cutout (Zhao et al. 2020)",
                         ["method.params.diff_augment=[color, translation, cutout]"]),
    "multiscale_fm": Candidate("pix2pixHD's 2-scale D with feature matching, weight 10 (Wang et al. 2018)",
                               multiscale_fm()),
    "multiscale_fm_d32": Candidate("multiscale_fm with half the D's width (ndf 32, a quarter of its work): more steps "
                                   "in a time budget, the generator unchanged",
                                   multiscale_fm(ndf=32)),
    "multiscale_fm_lr2x": Candidate("multiscale_fm with twice the learning rate (4e-4) for G and D: further in few steps",
                                    [*multiscale_fm(), "train.lr=0.0004"]),
    "resnet9": Candidate("ResNet-9 generator (instance norm) instead of the U-Net", RESNET, screen=[]),
    "maps_plus": Candidate("i2i's recommended maps recipe (recipes/maps_plus.yaml) with its L1 weight at 100, as it was "
                           "until maps_plus_l1_10's record; its records before maps_plus_d32's are of the recipe with the D "
                           "at ndf 64 (maps_plus_d64)", [L1_100], recipe="maps_plus"),
    "maps_plus_d32": Candidate("maps_plus with the D at half its width (ndf 32): what maps_plus became after this "
                               "candidate's record", [L1_100, "model.discriminator.params.ndf=32"], recipe="maps_plus"),
    "maps_plus_d64": Candidate("maps_plus with the D at the published width (ndf 64): maps_plus until maps_plus_d32's record",
                               [L1_100, "model.discriminator.params.ndf=64"], recipe="maps_plus"),
    "maps_plus_lr2x": Candidate("maps_plus at twice the learning rate (4e-4)", [L1_100, "train.lr=0.0004"], recipe="maps_plus"),
    "maps_plus_g32": Candidate("maps_plus with the U-Net at half its width (ngf 32, a quarter of its work): in a time "
                               "budget, about three times the steps, each on a whole 256x256 image",
                               [L1_100, "model.generator.params.ngf=32"], recipe="maps_plus"),
    "maps_plus_g16": Candidate("maps_plus with the U-Net at a quarter of its width (ngf 16): how far more steps go",
                               [L1_100, "model.generator.params.ngf=16"], recipe="maps_plus"),
    "maps_plus_g32_ttur": Candidate("maps_plus_g32 with two time-scales: the D's lr 4x the G's (Heusel et al. 2017)",
                                    [L1_100, "model.generator.params.ngf=32", "train.d_lr_ratio=4"], recipe="maps_plus"),
    "maps_plus_g32_fit": Candidate("maps_plus_g32 with its schedule fitted to the budget (train.budget_schedule: fit): "
                                   "half the steps at the lr, then its linear decay to zero (--minutes only)",
                                   [L1_100, "model.generator.params.ngf=32", "train.budget_schedule=fit"], recipe="maps_plus"),
    "maps_plus_g32_nodrop": Candidate("maps_plus_g32 without the U-Net's dropout: the default inference (instance mode) "
                                      "runs without it, and pix2pixHD's generators train without it",
                                      [L1_100, "model.generator.params.ngf=32", "model.generator.params.dropout=0"],
                                      recipe="maps_plus"),
    "maps_plus_nodrop": Candidate("maps_plus without the U-Net's dropout: the default inference (instance mode) runs "
                                  "without it, and pix2pixHD's generators train without it",
                                  [L1_100, "model.generator.params.dropout=0"], recipe="maps_plus"),
    "maps_plus_l1_10": Candidate("maps_plus with the L1 weight 10 instead of 100 (what recipes/maps_plus.yaml ships since "
                                 "this candidate's record): the feature matching keeps the structure (pix2pixHD has no "
                                 "L1 at all), the GAN gets more say against the blur",
                                 ["losses.1.weight=10"], recipe="maps_plus"),
    "maps_plus_g32_l1_10": Candidate("maps_plus_g32 with the L1 weight 10: is the L1's blur what stops the ngf-32 "
                                     "U-Net improving after about 2700 steps?",
                                     ["model.generator.params.ngf=32", "losses.1.weight=10"], recipe="maps_plus"),
    "maps_plus_l1_3": Candidate("maps_plus with the L1 weight 3: does less L1 still help, after 100 -> 10 gained 47 FID "
                                "in the 5-minute screen?", ["losses.1.weight=3"], recipe="maps_plus"),
    "maps_plus_l1_0": Candidate("maps_plus without the L1 (weight 0): the GAN and the feature matching alone, as "
                                "pix2pixHD trains", ["losses.1.weight=0"], recipe="maps_plus"),
    "maps_plus_fit": Candidate("maps_plus with its schedule fitted to the budget (train.budget_schedule: fit): half the "
                               "steps at the lr, then its linear decay to zero, against the level it holds at a constant lr "
                               "(--minutes only)", ["train.budget_schedule=fit"], recipe="maps_plus"),
    "maps_plus_ema_p4": Candidate("maps_plus with a wider average: the EMA's warm-up power 4 instead of 8, so within "
                                  "the budget it spans 0.14 of the run instead of 0.09 (Karras et al. 2024)",
                                  ["train.ema.power=4"], recipe="maps_plus"),
    "batch4": Candidate("batch 4, lr scaled 2x (sqrt), instance-norm U-Net (training = instance-mode inference)", BATCH4),
    "maps_plus_batch4": Candidate("maps_plus at batch 4, lr scaled 2x (sqrt), instance-norm U-Net: on a 2-core Zen 4 a "
                                  "batch of 4 runs about 1.45 times the images a second of batch 1, and each step "
                                  "averages 4 pairs",
                                  BATCH4, recipe="maps_plus"),
}


def budget_sets(steps: int | None, minutes: float | None) -> list[str]:
    """The recipe changes of a budget: ``steps`` steps, or ``minutes`` of the training loop."""
    return [f"train.max_steps={steps}"] if steps else [f"train.time_budget={minutes * 60:g}", "train.max_steps=1000000"]


def candidate_sets(candidate: Candidate, screen: bool) -> list[str]:
    """The candidate's own recipe changes, with the screen's smaller crops and U-Net where ``screen``."""
    return [*candidate.sets, *((SCREEN_DATA + candidate.screen) if screen else [])]


def run_sets(candidate: Candidate, seed: int, args: argparse.Namespace) -> list[str]:
    """Everything the study changes in ``candidate``'s recipe for one run."""
    return [f"data.root={args.data}", "data.download=false", f"train.seed={seed}", f"train.device={args.device}",
            "train.log_every=100", "train.sample_every=1000000", "train.checkpoint_every=1000000",
            "train.checkpoint_each_epoch=false", "train.tensorboard=false", *budget_sets(args.steps, args.minutes),
            *candidate_sets(candidate, args.screen), *([EMA] if args.with_ema else []), *args.overrides]


def train(candidate: Candidate, seed: int, args: argparse.Namespace, out: Path, env: dict[str, str]) -> subprocess.Popen:
    """``i2i run`` of ``candidate`` under the budget, started."""
    arguments = [arg for value in run_sets(candidate, seed, args) for arg in ("--set", value)]
    return subprocess.Popen([sys.executable, "-m", "i2i", "run", args.recipe or candidate.recipe, *arguments, "--out", str(out),
                             "--quiet"], cwd=ROOT, env=env)


def already_trained(run: Path, candidate: Candidate, seed: int, args: argparse.Namespace) -> bool:
    """Whether ``run`` holds this very run, finished: a study carried over from an earlier session
    (a third seed beside two trained before) trains only what is missing. The run's saved recipe
    must be the one the study would train, the output folder aside, and its budget spent."""
    checkpoint, saved = latest_checkpoint(run), run / "recipe.yaml"
    if checkpoint is None or not saved.is_file():
        return False
    expected = Recipe.from_file(args.recipe or candidate.recipe, run_sets(candidate, seed, args))
    if Recipe.from_file(saved).model_dump(exclude={"output_dir"}) != expected.model_dump(exclude={"output_dir"}):
        return False
    if args.steps:
        return checkpoint_step(checkpoint) == args.steps
    return any(record.get("time_budget", {}).get("stopped") for record in read_log(run))


def score(weights: Path, data: Path, size: int, limit: int, device: torch.device, extractor,
          targets: dict) -> dict[str, float]:
    """What ``i2i translate`` gives by default for ``weights`` (a checkpoint folder: its inference
    weights), scored as ``i2i bench quality --mode instance``. ``targets`` keeps the val targets'
    features per (data, direction, size) from one candidate to the next."""
    generator, recipe, _ = load_generator(resolve_generator_file(weights), device)
    val = protocol_dataset(recipe, data, "val", size)
    key = (recipe.data.dataset.name, recipe.data.direction, size)
    meter = QualityMeter(extractor)
    metrics = evaluate(generator, val, meter, DEFAULT_MODE, device, limit, recipe.train.seed, targets.get(key))
    targets[key] = meter.real_features_all()
    return {metric: metrics[metric] for metric in METRICS}


def summary(per_seed: dict[int, dict]) -> dict[str, dict[str, float]]:
    return {metric: {"mean": statistics.mean(run["metrics"][metric] for run in per_seed.values()),
                     "spread": max(run["metrics"][metric] for run in per_seed.values())
                     - min(run["metrics"][metric] for run in per_seed.values())}
            for metric in METRICS}


def train_all(runs: dict[tuple[str, int], Path], args: argparse.Namespace) -> dict[tuple[str, int], float]:
    """Every (candidate, seed) run, ``--jobs`` at a time (each with its share of the cores); seconds per run.
    Equal wall-clock runs go one at a time: a run beside another would reach fewer steps."""
    jobs = 1 if args.minutes else args.jobs
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // jobs))}
    seconds, pending, running = {}, [], {}
    for (name, seed), run in runs.items():
        if already_trained(run, CANDIDATES[name], seed, args):
            print(f"== {name} seed {seed}: already trained in {run}, kept", flush=True)
        else:
            pending.append(((name, seed), run))
    while pending or running:
        while pending and len(running) < jobs:
            (name, seed), run = pending.pop(0)
            print(f"== {name} seed {seed}: {budget_of(args)} -> {run}", flush=True)
            running[(name, seed)] = (train(CANDIDATES[name], seed, args, run, env), time.perf_counter())
        time.sleep(1)
        for key, (process, started) in list(running.items()):
            if process.poll() is not None:
                if process.returncode:
                    raise SystemExit(f"{key[0]} seed {key[1]}: i2i run failed (exit {process.returncode})")
                seconds[key] = time.perf_counter() - started
                del running[key]
    return seconds


def budget_of(args: argparse.Namespace) -> dict[str, float]:
    return {"steps": args.steps} if args.steps else {"minutes": args.minutes}


def study(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    out = args.out or Path(tempfile.mkdtemp(prefix="i2i-recipe-study-"))
    size = SCREEN_SIZE if args.screen else IMAGE_SIZE
    # Seed-major order: candidates alternate, so a slow drift of a shared machine falls on all of them.
    runs = {(name, seed): out / f"{name}-seed{seed}" for seed in args.seeds for name in args.candidates}
    seconds = {} if args.score_only else train_all(runs, args)
    extractor, targets = inception_extractor(device), {}
    # With --with-ema every run also keeps an average of its generator, which leaves training as it
    # was: the trained weights are the candidate's output, the average that of candidate+ema.
    variants = {"": GENERATOR_FILE, "+ema": INFERENCE_FILE} if args.with_ema else {"": None}
    for name in args.candidates:
        for suffix, weights_file in variants.items():
            per_seed = {}
            for seed in args.seeds:
                checkpoint = latest_checkpoint(runs[name, seed])
                weights = checkpoint / weights_file if weights_file else checkpoint  # a folder: its inference weights
                metrics = score(weights, args.data, size, args.limit, device, extractor, targets)
                per_seed[seed] = {"steps": checkpoint_step(checkpoint),
                                  "seconds": seconds.get((name, seed)),
                                  "weights": resolve_generator_file(weights).name, "metrics": metrics}
                print(f"   {name}{suffix} seed {seed}: steps {per_seed[seed]['steps']}  "
                      + "  ".join(f"{m} {v:.4g}" for m, v in metrics.items()), flush=True)
            record_study(args, name + suffix, CANDIDATES[name], per_seed, size, device)


def record_study(args: argparse.Namespace, name: str, candidate: Candidate, per_seed: dict, size: int,
                 device: torch.device) -> None:
    sets = candidate.sets + ([EMA] if name.endswith("+ema") else []) + args.overrides
    record = {**environment(device), "kind": "recipe_study", "candidate": name,
              "why": candidate.why, "recipe": str(args.recipe or candidate.recipe), "sets": sets, "budget": budget_of(args),
              "screen": args.screen, "image_size": size, "data": str(args.data), "split": "val", "limit": args.limit,
              "mode": DEFAULT_MODE, "seeds": args.seeds, "jobs": 1 if args.minutes else args.jobs, "runs": per_seed,
              "summary": summary(per_seed), "note": args.note}
    append_record(args.results, record)
    fid = record["summary"]["fid"]
    print(f"{name}: FID {fid['mean']:.1f} (spread {fid['spread']:.1f}) -> {args.results}", flush=True)


def table(results: Path) -> str:
    """The records as a Markdown table, one row per record, grouped by protocol."""
    rows = ["| protocol | budget | candidate | seeds | steps | FID | KID | SSIM | PSNR | CPU |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for record in read_records(results):
        if record.get("kind") != "recipe_study":
            continue
        s = record["summary"]
        budget = f"{record['budget']['steps']} steps" if "steps" in record["budget"] else f"{record['budget']['minutes']:g} min"
        steps = "/".join(str(run["steps"]) for run in record["runs"].values())
        rows.append(f"| {'screen 128' if record['screen'] else 'full 256'}, val 1..{record['limit']} | {budget} | "
                    f"{record['candidate']} | {len(record['seeds'])} | {steps} | "
                    f"{s['fid']['mean']:.1f} ({s['fid']['spread']:.1f}) | {s['kid']['mean']:.3f} ({s['kid']['spread']:.3f}) | "
                    f"{s['ssim']['mean']:.3f} ({s['ssim']['spread']:.3f}) | {s['psnr']['mean']:.2f} ({s['psnr']['spread']:.2f}) | "
                    f"{record['cpu']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidates", nargs="+", default=["pix2pix"], choices=sorted(CANDIDATES), metavar="NAME")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, help="equal steps")
    budget.add_argument("--minutes", type=float, help="equal wall-clock (train.time_budget)")
    parser.add_argument("--screen", action="store_true", help=f"the cheap pass: {SCREEN_SIZE}x{SCREEN_SIZE} crops")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--recipe", help="every candidate's starting recipe instead of its own (another data set)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "maps")
    parser.add_argument("--limit", type=int, default=400, help="val images scored (val 1..N)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--jobs", type=int, default=1, help="equal-steps runs trained side by side (the cores split)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a change to every candidate's recipe")
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--with-ema", action="store_true",
                        help="equal steps: each run also averages its generator; records NAME and NAME+ema from one run")
    parser.add_argument("--score-only", action="store_true", help="score the runs already in --out")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="recorded with each record (e.g. 'machine shared')")
    parser.add_argument("--list", action="store_true", help="the candidates and their changes")
    parser.add_argument("--table", action="store_true", help="print the records of --results as a Markdown table")
    args = parser.parse_args()
    if args.list:
        for name, candidate in CANDIDATES.items():
            print(f"{name:20s} {candidate.why}\n{'':20s} {' '.join(candidate.sets) or '(no changes)'}")
        return
    if args.table:
        print(table(args.results))
        return
    if args.steps is None and args.minutes is None:
        parser.error("give a budget: --steps N or --minutes M")
    if (args.steps is not None and args.steps < 1) or (args.minutes is not None and not args.minutes > 0):
        parser.error("the budget must be positive")
    if args.with_ema and args.minutes:
        parser.error("--with-ema is for equal steps: the average costs time, so a wall-clock run must choose")
    if args.jobs < 1:
        parser.error("--jobs must be 1 or more")
    if len(args.seeds) < 2:
        parser.error("--seeds needs two or more seeds: the spread between them is the noise")
    if args.score_only and not args.out:
        parser.error("--score-only needs --out, the folder of the runs")
    if not (args.data / "train").is_dir() or not (args.data / "val").is_dir():
        print(f"recipe study skipped: no train/ and val/ in {args.data} (give --data)")
        return
    study(args)


if __name__ == "__main__":
    main()
