"""Recipes: one YAML file describes a whole experiment.

Every component is ``{name: ..., params: {...}}`` and is looked up in its
registry; its params are validated by the component's own ``Params`` model (and
kept as that object), so a typo anywhere is reported with its YAML path
(``model.generator.params.ngf``).
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator

from safetensors import SafetensorError, safe_open

from i2i.contracts import AdversarialLoss, LossWeight, Params
from i2i.errors import I2IError
from i2i.plugins import NOT_INSTALLED, missing_distributions
from i2i.registry import DATASETS, DISCRIMINATORS, GENERATORS, LOSSES, METHODS, Registry


class RecipeError(I2IError):
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"invalid recipe {source}:\n{lines}")


def shipped_recipes() -> Path:
    """The recipes that come with i2i: inside the installed package (setup.py ships the
    checkout's top-level ``recipes/`` as ``i2i/recipes``), else the checkout's own folder."""
    packaged = Path(__file__).resolve().parent / "recipes"
    return packaged if packaged.is_dir() else packaged.parent.parent / "recipes"


def find_recipe(spec: str | Path) -> Path:
    """``spec`` where it is (or names) a file, else the recipe of that name that comes with i2i
    (``pix2pix_maps``), from any folder. A path wins over a name: a folder of that name here (a
    run directory, a data set) is refused, saying which shipped recipe it hides."""
    path = Path(spec)
    if path.is_dir():
        shipped = shipped_recipes() / f"{spec}.yaml"
        hidden = len(path.parts) == 1 and shipped.is_file()
        raise RecipeError(str(spec), ["is a folder, not a recipe file" + (
            f"; it hides the recipe of that name that comes with i2i: pass {shipped} for that one" if hidden else "")])
    if path.exists() or path.suffix in (".yaml", ".yml") or len(path.parts) > 1:
        return path
    folder = shipped_recipes()
    if (folder / f"{spec}.yaml").is_file():
        return folder / f"{spec}.yaml"
    if not folder.is_dir():
        raise RecipeError(str(spec), [f"no such file, and the recipes that come with i2i are missing: {NOT_INSTALLED}"])
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    close = difflib.get_close_matches(str(spec), names, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise RecipeError(str(spec), [f"no such file, and no recipe of that name comes with i2i; {hint}they are {', '.join(names)}"])


class ComponentSpec(Params):
    name: str
    params: Any = Field(default_factory=dict, description="a mapping; the component's Params object once validated")

    @model_validator(mode="before")
    @classmethod
    def _none_params_is_empty(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("params", {}) is None:
            data = {**data, "params": {}}
        return data


class LossSpec(ComponentSpec):
    weight: LossWeight = 1.0


class ModelSection(Params):
    generator: ComponentSpec
    discriminator: ComponentSpec
    # Unpaired methods train a network per direction; one spec serves both unless these name another.
    generator_ba: ComponentSpec | None = Field(None, description="the B -> A generator (cyclegan); default: as generator")
    discriminator_a: ComponentSpec | None = Field(
        None, description="the discriminator of domain A (cyclegan); default: as discriminator"
    )


class DataSection(Params):
    dataset: ComponentSpec
    root: Path = Field(Path("data"), description="dataset folder (holds train/ and val/ for split datasets)")
    download: bool = Field(False, description="fetch the dataset into root when it is missing")
    direction: Literal["AtoB", "BtoA"] = "AtoB"
    load_size: int = Field(286, gt=0, description="resize to this size before the random crop")
    crop_size: int = Field(256, gt=0)
    decay_load_size: int | None = Field(
        None, gt=0, description="training resizes to this size instead of load_size from the first epoch of the "
        "learning-rate decay (train.epochs) on; CUT's reference: crop_size, so no random crop then. null: load_size throughout"
    )
    flip: bool = True
    num_workers: int = Field(0, ge=0, le=64, description="data loader processes (each holds a copy of the dataset)")
    on_bad_image: Literal["error", "skip"] = "error"
    cache: Literal["auto", "memory", "none"] = Field(
        "auto", description="decode the training set once into memory (auto: when it fits in 2 GiB)"
    )
    on_device: bool = Field(False, description="keep the training set on the training device; crop and flip there")

    @model_validator(mode="after")
    def _crop_fits(self) -> DataSection:
        if self.crop_size > self.load_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than load_size {self.load_size}")
        if self.decay_load_size is not None and self.crop_size > self.decay_load_size:
            raise ValueError(f"crop_size {self.crop_size} is larger than decay_load_size {self.decay_load_size}")
        if self.decay_load_size is not None and self.on_device:
            raise ValueError("decay_load_size needs the images resized again when the decay starts; set on_device: false")
        return self


Beta = Annotated[float, Field(ge=0, lt=1)]  # an Adam moment's decay
# Counts of steps (epochs, batches): a billion steps is years of training at 10 steps/s; past it
# a value is a slip (10^21), and past 2^63 torch's step counters and tensors overflow.
MAX_STEPS = 10**9
Steps = Annotated[int, Field(le=MAX_STEPS)]
# Batches over which BatchNorm statistics are recomputed at every checkpoint (100 measured no better than 0).
MAX_EVAL_BN_BATCHES = 10_000


class AverageSection(Params):
    decay: float = Field(0.999, gt=0, lt=1, description="the average's decay per step, warmed up as "
                         "min(decay, (1 + n) / (power + 2 + n)) over the n steps since start_step")
    power: float = Field(8.0, gt=0, le=1000, description="the warm-up's power: until decay is reached, step k weighs "
                         "about k**power in the average, whose width is sqrt((power + 1) / (power + 3)) / (power + 2) of "
                         "the run (0.09 at 8, 0.14 at 4; i2i/engine/ema.py)")
    start_step: Steps = Field(0, ge=0, description="steps before the average starts (it copies the weights until then)")
    every: Steps = Field(10, ge=1, description="steps between updates, each folding in the decay of that many steps")


DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
DURATION_HELP = "expected a duration such as 15m, 2h, 90s or 1h30m, or a number of seconds"


def parse_duration(value: Any) -> float:
    """``15m``, ``2h``, ``90s``, ``1h30m`` or a number of seconds -> seconds (finite, more than 0)."""
    if isinstance(value, str):
        match = DURATION.fullmatch(value.replace(" ", ""))
        if match and any(match.groups()):
            value = sum(float(part or 0) * unit for part, unit in zip(match.groups(), (3600, 60, 1)))
        else:
            try:
                value = float(value)
            except ValueError:
                raise ValueError(DURATION_HELP) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(DURATION_HELP)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("a time budget must be a finite duration of more than 0 seconds")
    return float(value)


class TrainSection(Params):
    epochs: Steps = Field(100, ge=0, description="epochs at the initial learning rate")
    epochs_decay: Steps = Field(100, ge=0, description="epochs of linear decay to zero afterwards")
    lr: float = Field(2e-4, gt=0, le=1, description="Adam's learning rate (at most 1)")
    d_lr_ratio: float = Field(1.0, gt=0, allow_inf_nan=False, description="the discriminator's learning rate as a "
                              "multiple of lr, through the whole schedule (two time-scales, TTUR: Heusel et al. 2017)")
    betas: tuple[Beta, Beta] = (0.5, 0.999)
    batch_size: int = Field(1, ge=1)
    seed: int = Field(0, ge=0, lt=2**63, description="seeds the weights, the data order and the augmentation")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    engine: Literal["fast", "reference"] = Field(
        "fast", description="fast: the settings below that the recipe leaves unset are the fastest measured on this "
        "machine (docs/engine.md); reference: the published eager fp32 step"
    )
    engine_probe: bool = Field(True, description="engine fast: time the candidate settings on a recipe shape's first run "
                               "on a machine (cached); false: the static choice (also env I2I_ENGINE_PROBE=0)")
    # The engine settings: unset (null) = the engine decides.
    precision: Literal["auto", "fp32", "bf16", "fp16"] | None = None
    channels_last: bool | None = None
    compile: bool | None = None
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode when train.compile is on"
    )
    fused_adam: bool | None = Field(None, description="one fused kernel per Adam update (CPU and CUDA); the same math")
    cuda_graph: bool | None = Field(None, description="CUDA: the whole training step captured once as a CUDA graph "
                                    "and replayed, one launch a step (docs/engine.md); the same math")
    cpu_speedups: bool | None = Field(
        None,
        description="CPU: thin convolutions as matmuls, dense BatchNorm gradients, freed memory kept "
        "in the process; the same math (docs/engine.md)",
    )
    sync_batchnorm: bool = Field(False, description="with several processes: BatchNorm statistics over the global batch")
    max_steps: Steps | None = Field(None, ge=1, description="stop after this many steps (short runs)")
    time_budget: Annotated[float, BeforeValidator(parse_duration)] | None = Field(
        None, description="stop after this much training time (15m, 2h, 90s, 1h30m or seconds), counted from the "
        "start of the training loop (setup and the engine probe excluded; this invocation's time on a resume), "
        "at a step boundary with a checkpoint; with max_steps, whichever comes first (docs/bench.md)"
    )
    budget_schedule: Literal["keep", "fit"] = Field(
        "keep", description="with train.time_budget, keep: the lr schedule as written; fit: the whole schedule "
        "(epochs, then epochs_decay) scaled into the steps the budget allows, estimated from the steps/s measured "
        "after 20 warm-up steps of the loop and refined every 50 steps until the decay begins"
    )
    log_every: Steps = Field(50, ge=1, description="steps between loss reads and log lines")
    sample_every: Steps = Field(500, ge=1, description="steps between sample grids")
    checkpoint_every: Steps = Field(1000, ge=1, description="steps between checkpoints")
    checkpoint_each_epoch: bool = Field(True, description="also a checkpoint at each epoch end (false: on short epochs, "
                                        "e.g. maps at batch 1, checkpoints would otherwise come every few hundred steps)")
    keep_checkpoints: Steps = Field(3, ge=1)
    on_nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="a NaN/Inf loss or gradient: stop (keeping the last good checkpoint) or skip that update"
    )
    tensorboard: bool = Field(True, description="log scalars and sample grids to <run dir>/tensorboard")
    eval_every: Steps | None = Field(
        None, ge=1, description="epochs between FID/SSIM evaluations on the val split (best checkpoint kept in <run dir>/best)"
    )
    eval_images: Steps = Field(50, ge=2, description="val images per evaluation (FID needs at least 2)")
    ema: AverageSection | None = Field(
        None, description="an exponential moving average of the generator's weights, used for samples, evaluation "
        "and the checkpoint's inference weights (docs/bench.md, eval weights); null: off"
    )
    eval_bn_batches: int = Field(
        0, ge=0, le=MAX_EVAL_BN_BATCHES, description="training batches over which BatchNorm statistics are recomputed for eval mode at "
        "every checkpoint, into the inference weights (0, the default: eval mode keeps the running statistics; "
        "on maps, 100 measured no better: docs/bench.md)"
    )
    eval_bn_dropout: bool = Field(True, description="dropout active while the statistics are recomputed, as in training")

    @model_validator(mode="after")
    def _has_length(self) -> TrainSection:
        if self.epochs + self.epochs_decay == 0 and self.max_steps is None:
            raise ValueError("epochs + epochs_decay is 0 and max_steps is unset: nothing to train")
        if self.lr * self.d_lr_ratio > 1:
            raise ValueError(f"lr x d_lr_ratio = {self.lr * self.d_lr_ratio:g}: the discriminator's learning rate is at most 1")
        if self.budget_schedule == "fit" and self.time_budget is None:
            raise ValueError("budget_schedule fit needs a train.time_budget to fit the schedule to")
        if self.budget_schedule == "fit" and self.epochs + self.epochs_decay == 0:
            raise ValueError("budget_schedule fit scales epochs and epochs_decay, and both are 0")
        if self.ema and self.max_steps is not None and self.ema.start_step >= self.max_steps:
            raise ValueError(f"ema.start_step {self.ema.start_step} is not below max_steps {self.max_steps}: "
                             "the average would never start")
        return self


class Recipe(Params):
    name: str
    description: str = ""
    method: ComponentSpec = Field(
        default_factory=lambda: ComponentSpec(name="pix2pix"), description="the training method (i2i list methods)"
    )
    model: ModelSection
    losses: list[LossSpec] = Field(min_length=1)
    data: DataSection
    train: TrainSection = Field(default_factory=TrainSection)
    output_dir: Path | None = Field(None, description="run directory; default runs/<name>")
    plugins: list[str] | None = Field(
        None, description="distributions allowed to provide components; [] = built-ins only; unset = any installed"
    )

    @model_validator(mode="before")
    @classmethod
    def _method_is_pix2pix_unless_named(cls, data: Any) -> Any:
        """A ``method`` without a name is pix2pix, as a recipe without one is: ``--set
        method.params.feature_matching=10`` works on any pix2pix recipe."""
        method = data.get("method") if isinstance(data, dict) else None
        if isinstance(method, dict) and "name" not in method:
            data = {**data, "method": {"name": "pix2pix", **method}}
        return data

    @field_validator("output_dir", mode="before")
    @classmethod
    def _output_dir_not_empty(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # Path("") is the current folder, beside the user's files
            raise ValueError("is empty, which would train into the current folder; give a run directory, "
                             "or leave output_dir out for runs/<name>")
        return value

    @property
    def run_dir(self) -> Path:
        return self.output_dir or Path("runs") / self.name

    def components(self) -> list[tuple[str, Registry, ComponentSpec]]:
        """(YAML path, registry, spec) for every component of the recipe."""
        found = [
            ("method", METHODS, self.method),
            ("model.generator", GENERATORS, self.model.generator),
            ("model.discriminator", DISCRIMINATORS, self.model.discriminator),
            ("data.dataset", DATASETS, self.data.dataset),
        ]
        found += [(f"model.{role}", registry, spec)
                  for role, registry, spec in (("generator_ba", GENERATORS, self.model.generator_ba),
                                               ("discriminator_a", DISCRIMINATORS, self.model.discriminator_a))
                  if spec is not None]
        found += [(f"losses.{i}", LOSSES, spec) for i, spec in enumerate(self.losses)]
        return found

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    # ------------------------------------------------ the ways in, as litgpt's Config
    @classmethod
    def from_dict(cls, data: Any, source: str = "<recipe>") -> Recipe:
        """Validate ``data``; every problem is reported with its YAML path, naming ``source``."""
        return _validate(data, source)

    @classmethod
    def from_file(cls, path: str | Path, overrides: list[str] | None = None) -> Recipe:
        """A YAML recipe (a path, or the name of one that comes with i2i) with ``--set``-style
        overrides (``train.lr=1e-4``) applied."""
        path = find_recipe(path)
        try:
            text = path.read_text()
        except OSError as error:
            raise RecipeError(str(path), [f"cannot read: {error.strerror or error}"]) from None
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as error:  # ValueError: a number too long to convert (5000 digits)
            raise RecipeError(str(path), [f"not valid YAML: {error}"]) from None
        if data is None:
            data = {}
        if overrides:
            if not isinstance(data, dict):
                raise RecipeError(str(path), ["<root>: expected a mapping of sections"])
            data = apply_overrides(data, overrides)
        return _validate(data, str(path))

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Recipe:
        """The recipe a checkpoint was trained with: from a ``.safetensors`` file's metadata,
        a checkpoint folder's ``generator.safetensors``, or a run directory's ``recipe.yaml``."""
        path = Path(path)
        if path.is_dir() and (path / "recipe.yaml").is_file():
            return cls.from_file(path / "recipe.yaml")
        weights = path / "generator.safetensors" if path.is_dir() else path
        try:
            with safe_open(weights, "pt") as handle:
                text = (handle.metadata() or {}).get("recipe")
        except (SafetensorError, OSError) as error:
            raise RecipeError(str(weights), [f"cannot read: {error}"]) from None
        if text is None:
            raise RecipeError(str(weights), ["holds no recipe in its metadata (not written by i2i?)"])
        try:
            data = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError) as error:
            raise RecipeError(str(weights), [f"the recipe in its metadata is not valid YAML: {error}"]) from None
        return _validate(data, str(weights))

    def variant(self, **changes: Any) -> Recipe:
        """A validated copy with dotted keys changed: ``recipe.variant(**{"train.precision": "fp32"})``."""
        data = self.model_dump(mode="json")
        for key, value in changes.items():
            *sections, last = key.split(".")
            node = data
            for section in sections:
                node = node[section]
            node[last] = value
        return _validate(data, f"{self.name} (variant)")


def without_file_params(data: Any) -> Any:
    """``data`` (a recipe as parsed YAML, before validation) without the component params that
    name a file or folder (a field annotated with ``Path``, such as timm_unet's
    ``pretrained_path``). For a recipe that comes inside a weights file: the file holds the
    trained weights themselves, and its recipe must never make i2i open a file (a pickle above
    all). Components the registries do not know are left as they are; validation names them."""
    if not isinstance(data, dict):
        return data
    model, section = data.get("model"), data.get("data")
    specs = [(METHODS, data.get("method"))]
    specs += [(registry, model.get(role)) for role, registry in
              (("generator", GENERATORS), ("discriminator", DISCRIMINATORS), ("generator_ba", GENERATORS),
               ("discriminator_a", DISCRIMINATORS))] if isinstance(model, dict) else []
    specs += [(DATASETS, section.get("dataset"))] if isinstance(section, dict) else []
    losses = data.get("losses")
    specs += [(LOSSES, spec) for spec in losses] if isinstance(losses, list) else []
    for registry, spec in specs:
        if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("params"), dict)):
            continue
        try:
            fields = registry.get(spec["name"], data.get("plugins")).params.model_fields
        except (I2IError, TypeError):
            continue
        for key in [key for key in spec["params"] if key in fields and _names_a_file(fields[key].annotation)]:
            del spec["params"][key]
    return data


def _names_a_file(annotation: Any) -> bool:
    return annotation is Path or any(_names_a_file(arg) for arg in typing.get_args(annotation))


# Bounded reprs of bad values: a YAML alias bomb (lists nested by reference) would
# otherwise print billions of items.
SHORT = reprlib.Repr()
SHORT.maxlevel, SHORT.maxlist, SHORT.maxdict, SHORT.maxstring, SHORT.maxother = 2, 4, 4, 80, 80


def _format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    problems = []
    for item in error.errors():
        path = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        value = item.get("input")
        shown = "" if isinstance(value, dict) or item["type"] == "missing" else f" (got {SHORT.repr(value)})"
        problems.append(f"{path or '<root>'}: {item['msg']}{shown}")
    return problems


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a","b","c"], value parsed as YAML, so 3 is an int and [1,2] a list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError("--set", [f"expected key=value, got {text!r}"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError):  # then the value is the text; validation says what is wrong with it
        value = raw
    return key.strip().split("."), value


def _key(path: list[str]) -> str:
    key = ".".join(path)
    return key if len(key) <= 80 else f"{key[:60]}... ({len(key)} characters)"


def _existing_item(path: list[str], items: list) -> int:
    """The last part of ``path`` as an index of ``items``: plain decimal digits only (``str.isdigit``
    takes ``²``, which ``int`` refuses), and few enough of them to convert (5000 would not)."""
    part = path[-1]
    if part.isascii() and part.isdigit() and len(part) <= len(str(len(items))) and int(part) < len(items):
        return int(part)
    raise RecipeError("--set", [f"{_key(path)}: no such list item (the list has {len(items)}; an index is a "
                                f"plain number below that)"])


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_existing_item(path[: i + 1], node)]
            elif isinstance(node, dict):
                node = node.setdefault(part, {})
            else:
                raise RecipeError("--set", [f"{_key(path[: i + 1])}: cannot descend into {type(node).__name__}"])
            if not isinstance(node, (dict, list)):
                raise RecipeError("--set", [f"{_key(path[: i + 1])} is a value, not a section"])
        last = path[-1]
        if isinstance(node, list):
            node[_existing_item(path, node)] = value
        else:
            node[last] = value
    return data


def _validate(data: Any, source: str) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(source, [f"<root>: expected a mapping of sections, got {type(data).__name__}"])
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(source, _format_validation_error(error)) from None
    problems = [f"plugins: distribution '{name}' is not installed" for name in missing_distributions(recipe.plugins or [])]
    adversarial = 0
    for path, registry, spec in recipe.components():
        try:
            entry = registry.get(spec.name, recipe.plugins)
        except I2IError as error:
            problems.append(f"{path}.name: {error}")
            continue
        adversarial += issubclass(entry.obj, AdversarialLoss)
        try:
            spec.params = entry.params.model_validate(spec.params)
        except ValidationError as error:
            problems += _format_validation_error(error, f"{path}.params")
    if not problems and adversarial != 1:
        problems.append(f"losses: need exactly one adversarial loss (such as 'gan'), found {adversarial}")
    if not problems:
        method = METHODS.get(recipe.method.name, recipe.plugins).obj
        problems += _method_problems(method, recipe) + method.check_recipe(recipe.method.params, recipe)
    if problems:
        raise RecipeError(source, problems)
    return recipe


def _method_problems(method: type, recipe: Recipe) -> list[str]:
    """What every method refuses: a network it does not train (silently unused otherwise), and
    data without pairs where it needs them (pix2pix would pair unrelated images)."""
    name, trained = recipe.method.name, (*method.generator_side, *method.discriminator_side)
    problems = [
        f"model.{role}: method {name} trains no {role} (its networks: {', '.join(trained)}); remove it"
        for role in ("generator_ba", "discriminator_a")
        if getattr(recipe.model, role) is not None and role not in trained
    ]
    dataset = recipe.data.dataset.name
    if method.needs_pairs and not DATASETS.get(dataset, recipe.plugins).obj.pairs:
        problems.append(f"data.dataset.name: method {name} trains on pairs (each input with its own target), and "
                        f"dataset {dataset} gives unpaired images; use a paired dataset (aligned, paired_folders), "
                        f"or method cyclegan or cut")
    return problems
