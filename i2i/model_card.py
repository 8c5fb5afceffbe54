"""The model card (README.md) of a generator pushed to the Hub, written from the run's own files.

Its metrics are only those the run recorded for the pushed step or earlier: the
evaluations during training (``eval_*`` records of ``log.jsonl``) and the
``i2i bench quality`` records whose checkpoint lies in the run directory. With none,
the card says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from i2i.bench.records import read_records
from i2i.recipe import Recipe
from i2i.report import read_log

METRICS = ("fid", "kid", "ssim", "psnr")
# Evaluations during training logged before records named their mode ran in train mode.
LOGS_BEFORE_EVAL_MODE = "train"


@dataclass(frozen=True)
class Evaluation:
    measured_by: str
    step: int
    split: str
    images: int
    mode: str
    metrics: dict[str, float]


def _is_inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def recorded_evaluations(run_dir: Path, step: int, quality_results: Path | None) -> list[Evaluation]:
    """What the run measured of its generator up to ``step``, oldest first."""
    found = [
        Evaluation("evaluation during training", record["step"], "val", record["eval_images"],
                   record.get("eval_mode", LOGS_BEFORE_EVAL_MODE),
                   {key: record[f"eval_{key}"] for key in METRICS})
        for record in read_log(run_dir)
        if "eval_fid" in record and record["step"] <= step
    ]
    for record in read_records(quality_results) if quality_results else []:
        if _is_inside(Path(record["checkpoint"]), run_dir) and record["steps_trained"] <= step:
            metrics = record["metrics"]
            found.append(Evaluation("i2i bench quality", record["steps_trained"], record["split"], metrics["images"],
                                    record["mode"], {key: metrics[key] for key in METRICS}))
    return sorted(found, key=lambda evaluation: evaluation.step)


def sample_step(path: str) -> int:
    """The step of a sample grid ``.../step_00000400.png``."""
    return int(Path(path).stem.removeprefix("step_"))


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def _metrics_section(evaluations: list[Evaluation]) -> str:
    if not evaluations:
        return "No metrics recorded for this run.\n"
    rows = [
        f"| {e.measured_by} | {e.step} | {e.split} | {e.images} | {e.mode} | "
        + " | ".join(_number(e.metrics[key]) for key in METRICS) + " |"
        for e in evaluations
    ]
    return (
        "| measured by | step | split | images | generator mode | FID | KID | SSIM | PSNR (dB) |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        + "\n".join(rows)
        + "\n\nFID and KID from few images are biased upwards: compare them only with figures measured the same way.\n"
    )


def model_card(
    repo_id: str,
    recipe: Recipe,
    recipe_yaml: str,
    step: int,
    i2i_version: str,
    sample: str | None,
    evaluations: list[Evaluation],
) -> str:
    """README.md for the Hub repo ``repo_id``; ``sample`` is the sample grid's path in the repo."""
    description = f"{recipe.description.strip()}\n\n" if recipe.description.strip() else ""
    if sample:
        samples = f"![input, generated, target]({sample})\n\nFixed val images at step {sample_step(sample)}: input | generated | target.\n"
    else:
        samples = "The run wrote no sample grid.\n"
    return f"""---
library_name: i2i
pipeline_tag: image-to-image
tags:
- pix2pix
- image-to-image
---

# {repo_id}

{description}A pix2pix-family image-to-image generator trained with i2i {i2i_version}: recipe `{recipe.name}`,
generator `{recipe.model.generator.name}`, discriminator `{recipe.model.discriminator.name}`,
dataset `{recipe.data.dataset.name}` ({recipe.data.direction}), {step} training steps.

## Use it

```python
import i2i
from PIL import Image

translator = i2i.load("hf://{repo_id}")
translator(Image.open("input.png")).save("output.png")
```

`i2i.load` (i2i installed with its `hub` extra) downloads `generator.safetensors` into the
Hugging Face cache; the recipe travels in the file's metadata, so nothing else is needed.

## Samples

{samples}
## Metrics

{_metrics_section(evaluations)}
## Recipe

```yaml
{recipe_yaml.rstrip()}
```
"""
