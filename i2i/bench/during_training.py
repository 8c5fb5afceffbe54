"""Evaluation during training (``train.eval_every``): FID and SSIM on a val subset.

Every ``eval_every`` epochs, right after the end-of-epoch checkpoint, the first
``eval_images`` val samples are translated (generator in the default inference mode,
``eval_mode`` in the record) and scored as ``i2i bench quality`` scores them: a set without
pairs (``unaligned``: testA, testB) as two sets, FID and KID of the translated inputs against
the targets, with no SSIM or PSNR, which need a true pair (``unpaired_aligned`` and paired
sets have one); the figures go to log.jsonl as ``eval_*`` and the
checkpoint with the lowest FID so far is copied to ``<run dir>/best`` with the
figures in its manifest. The val features are extracted once per run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from i2i.bench import EVALUATION_MODE
from i2i.bench.inception import inception_extractor
from i2i.bench.metrics import QualityMeter
from i2i.bench.quality import evaluate, evaluate_unpaired
from i2i.engine.build import build_dataset
from i2i.engine.checkpoint import MANIFEST
from i2i.engine.callbacks import Callback
from i2i.engine.trainer import Trainer
from i2i.errors import I2IError
from i2i.safe_files import remove_tree, write_file


BEST = "best"


def best_fid(run_dir: Path) -> float | None:
    """The FID recorded in ``run_dir/best`` (a resumed run keeps its earlier best)."""
    try:
        return float(json.loads((run_dir / BEST / MANIFEST).read_text())["best"]["fid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep_as_best(checkpoint: Path, run_dir: Path, figures: dict) -> Path:
    """Copy ``checkpoint`` to ``run_dir/best`` (built aside, then renamed into place)."""
    best, tmp = run_dir / BEST, run_dir / f".{BEST}.tmp"
    remove_tree(tmp)
    shutil.copytree(checkpoint, tmp)
    manifest = json.loads((tmp / MANIFEST).read_text())
    manifest["best"] = figures
    write_file(tmp / MANIFEST, json.dumps(manifest, indent=1))
    # Two renames instead of delete-then-rename: the window without a best/ is two
    # metadata operations, not a whole folder's deletion.
    old = run_dir / f".{BEST}.old"
    remove_tree(old)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)
    return best


class EvaluationCallback(Callback):
    def __init__(self, trainer: Trainer):
        try:
            self.dataset = build_dataset(trainer.recipe, "val", train=False)
        except I2IError as error:
            raise I2IError(f"train.eval_every needs a val split to evaluate on: {error}") from None
        self.dataset.prepare()
        sizes = self.dataset.unpaired_sizes()
        self.score = evaluate if sizes is None else evaluate_unpaired
        self.images = min(trainer.cfg.eval_images, *(sizes or (len(self.dataset),)))
        if self.images < 2:
            held = len(self.dataset) if sizes is None else f"{sizes[0]} inputs and {sizes[1]} targets"
            raise I2IError(f"train.eval_every: FID needs at least 2 val images, the val split has {held}")
        self.extractor = None  # loaded at the first evaluation
        self.real_features = None
        self.best = best_fid(trainer.run_dir)

    def on_step(self, trainer: Trainer) -> None:
        epochs_done, within = divmod(trainer.step, trainer.steps_per_epoch)
        if within or epochs_done % trainer.cfg.eval_every:
            return
        if self.extractor is None:
            self.extractor = inception_extractor(trainer.device)
        meter = QualityMeter(self.extractor)
        generator = trainer.inference_generator(eval_statistics=EVALUATION_MODE == "eval") or trainer.generator
        metrics = self.score(
            generator, self.dataset, meter, EVALUATION_MODE, trainer.device, self.images, trainer.cfg.seed, self.real_features
        )
        self.real_features = meter.real_features_all()
        scored = [key for key in ("fid", "kid", "ssim", "psnr") if key in metrics]  # ssim, psnr: only with true pairs
        record = {"step": trainer.step, "epoch": epochs_done - 1, "eval_images": metrics["images"],
                  "eval_mode": EVALUATION_MODE, **{f"eval_{key}": metrics[key] for key in scored}}
        trainer.log(record)  # log.jsonl, the console, TensorBoard and the report
        shown = {"fid": ("FID", ".2f"), "kid": ("KID", ".4f"), "ssim": ("SSIM", ".4f"), "psnr": ("PSNR", ".2f")}
        line = f"eval at step {trainer.step}: " + "  ".join(f"{shown[k][0]} {metrics[k]:{shown[k][1]}}" for k in scored)
        if self.best is None or metrics["fid"] < self.best:
            self.best = metrics["fid"]
            checkpoint = trainer.run_dir / "checkpoints" / f"step_{trainer.step:08d}"
            keep_as_best(checkpoint, trainer.run_dir, {"step": trainer.step, "mode": EVALUATION_MODE, **metrics})
            line += f"  (best so far: {trainer.run_dir / BEST})"
        trainer.log_line(line)
