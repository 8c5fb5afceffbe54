"""The model card (README.md) of a generator pushed to the Hub, written from the run's own files.

Its metrics are only those the run recorded for the pushed step or earlier: the
evaluations during training (``eval_*`` records of ``log.jsonl``) and the
``i2i bench quality`` records whose checkpoint lies in the run directory. With none,
the card says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from i2i.bench.records import read_records
from i2i.recipe import Recipe
from i2i.report import read_log

Record = TypeVar("Record", bound=BaseModel)

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
    metrics: dict[str, float | None]


# The records a model card quotes, as the run and `i2i bench quality` write them; a file may have
# been edited or damaged since, so each is checked (strictly: a step is an int, not "3") first.
class LoggedEvaluation(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    step: int = Field(ge=0)
    eval_images: int = Field(ge=0)
    eval_mode: str = LOGS_BEFORE_EVAL_MODE
    eval_fid: float | None
    eval_kid: float | None = None
    eval_ssim: float | None = None
    eval_psnr: float | None = None


class QualityMetrics(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    images: int = Field(ge=0)
    fid: float | None = None
    kid: float | None = None
    ssim: float | None = None
    psnr: float | None = None


class QualityRecord(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    kind: Literal["quality"] = "quality"
    checkpoint: str
    steps_trained: int
    split: str
    mode: str
    metrics: QualityMetrics


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path, folder = path.resolve(), folder.resolve()
    except (OSError, ValueError):  # a path with a NUL byte, a loop of links: not one of the run's
        return False
    return path == folder or folder in path.parents


def recorded_evaluations(
    run_dir: Path, step: int, quality_results: Path | None, warn: Callable[[str], None] = warnings.warn
) -> list[Evaluation]:
    """What the run measured of its generator up to ``step``, oldest first. Damaged records
    (in ``log.jsonl`` or ``quality_results``) are passed over with a note to ``warn``; records of
    another kind (``i2i bench speed``'s) are passed over without one."""
    skipped: list[str] = []
    found = []
    for record in read_log(run_dir, skipped):
        if "eval_fid" not in record:
            continue
        logged = _validated(LoggedEvaluation, record, f"{run_dir / 'log.jsonl'}: the evaluation at step {record['step']}",
                            skipped)
        if logged and logged.step <= step:
            found.append(Evaluation("evaluation during training", logged.step, "val", logged.eval_images, logged.eval_mode,
                                    {key: getattr(logged, f"eval_{key}") for key in METRICS}))
    records = read_records(quality_results, skipped) if quality_results else []
    for number, record in enumerate(records, 1):
        if record.get("kind", "quality") != "quality":  # speed records, in a file given by mistake
            continue
        quality = _validated(QualityRecord, record, f"{quality_results}: quality record {number}", skipped)
        if quality and _is_inside(Path(quality.checkpoint), run_dir) and quality.steps_trained <= step:
            metrics = quality.metrics
            found.append(Evaluation("i2i bench quality", quality.steps_trained, quality.split, metrics.images,
                                    quality.mode, {key: getattr(metrics, key) for key in METRICS}))
    for note in skipped:
        warn(f"not in the model card: {note}")
    return sorted(found, key=lambda evaluation: evaluation.step)


def _validated(model: type[Record], record: dict, where: str, skipped: list[str]) -> Record | None:
    """``record`` as ``model``, or None with its first problem added to ``skipped``."""
    try:
        return model.model_validate(record)
    except ValidationError as error:
        first = error.errors()[0]
        skipped.append(f"{where}: {'.'.join(map(str, first['loc']))}: {first['msg']}")
        return None


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
- {recipe.method.name}
- image-to-image
---

# {repo_id}

{description}An image-to-image generator trained with i2i {i2i_version} ({recipe.method.name}): recipe `{recipe.name}`,
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
