"""Hostile or broken inputs have two outcomes only: success or a clear error.

Recipes: random YAML structures, random edits of a valid recipe, random ``--set``
overrides and random text go through ``Recipe.from_dict``/``Recipe.from_file`` and
raise nothing but ``RecipeError``. Images: random bytes and damaged PNG, JPEG,
GIF, BMP, TIFF and WebP files go through ``read_rgb`` and the ``aligned``
dataset and raise nothing but ``DataError``. ``translate``: random tile, overlap,
batch size, output folders (new, the input folder, inside it, a file, under a file)
and input sets (shared stems, a corrupt image) end in success or one clear line, and
never change an input file. Weights files with random metadata values and a tensor of a
random dtype and values load and translate or raise one ``I2IError``, writing nothing
beside the file; random JSON in the engine cache ends in a choice that keeps the
recipe's settings and a valid entry in its place. Method and train params (any number,
inf, nan, 10^21) validate to finite values or raise a ``RecipeError``; damaged log,
environment and ``--results`` records still give a report and a model card; any text as a
Hub id is one ``HubError`` or an id huggingface_hub itself accepts.

Derandomized, so that CI sees the same examples every run.
"""

import copy
import functools
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from i2i.contracts import Params
from i2i.data.aligned import AlignedDataset, read_rgb
from i2i.data.base import DataError
from i2i.errors import I2IError
from i2i.recipe import DataSection, Recipe, RecipeError, TrainSection
from i2i.translate import translate_paths

from conftest import tiny_recipe

FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=100)
MANY = settings(FUZZ, max_examples=200)

# ------------------------------------------------------------------- recipes
NAMES = sorted({*Recipe.model_fields, *DataSection.model_fields, *TrainSection.model_fields,
                "generator", "discriminator", "dataset", "name", "params", "weight", "unet", "patchgan",
                "gan", "l1", "synthetic", "aligned", "ngf", "num_downs", "mode", "length", "size"})
KEYS = st.one_of(st.sampled_from(NAMES), st.text(max_size=8))
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=12),
    st.sampled_from(NAMES), st.sampled_from(["AtoB", "BtoA", "cpu", "auto", "fp16", "bf16", "skip", "stop"]),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=5), max_leaves=24
)
PATHS = st.lists(st.one_of(KEYS, st.sampled_from(["0", "1", "7"])), min_size=1, max_size=4)
OVERRIDE_VALUES = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["[1, 2", "{a: b}", "!!python/object/apply:os.system ['true']", "&a [*a]", "1e999", "-1", "null", "~"]),
    VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()),
)


def only_recipe_errors(action) -> None:
    try:
        action()
    except RecipeError:
        pass


@MANY
@given(VALUES)
def test_random_structures_validate_or_raise_a_recipe_error(data):
    only_recipe_errors(lambda: Recipe.from_dict(data))


def set_path(data, path: list[str], value) -> None:
    """Put ``value`` at ``path``, making dicts on the way; a path through a scalar stops there."""
    node = data
    for part in path[:-1]:
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            return
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and path[-1].isdigit() and int(path[-1]) < len(node):
        node[int(path[-1])] = value


def existing_paths(data, prefix=()) -> list[list[str]]:
    children = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else []
    found = []
    for key, value in children:
        found.append([*prefix, str(key)])
        found += existing_paths(value, (*prefix, str(key)))
    return found


EXISTING = existing_paths(tiny_recipe())
EDITS = st.lists(st.tuples(st.one_of(st.sampled_from(EXISTING), PATHS), VALUES), min_size=1, max_size=3)


@MANY
@given(EDITS)
def test_random_edits_of_a_valid_recipe_validate_or_raise_a_recipe_error(edits):
    data = copy.deepcopy(tiny_recipe())
    for path, value in edits:
        set_path(data, path, value)
    only_recipe_errors(lambda: Recipe.from_dict(data))


@FUZZ
@given(EDITS, st.lists(st.tuples(st.one_of(st.sampled_from(EXISTING), PATHS), OVERRIDE_VALUES), max_size=3))
def test_recipe_files_with_random_overrides_load_or_raise_a_recipe_error(edits, overrides):
    data = copy.deepcopy(tiny_recipe())
    for path, value in edits[:1]:
        set_path(data, path, value)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(yaml.safe_dump(data))
        only_recipe_errors(lambda: Recipe.from_file(path, [f"{'.'.join(p)}={v}" for p, v in overrides]))


@FUZZ
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_random_text_as_a_recipe_file_loads_or_raises_a_recipe_error(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "recipe.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogateescape")
        only_recipe_errors(lambda: Recipe.from_file(path))


# -------------------------------------------------------------------- images
def encoded(fmt: str, mode: str) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (16, 32, 4), dtype=np.uint8)  # 2:1, as an aligned pair
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


SEEDS = [encoded(fmt, mode) for fmt, modes in {
    "PNG": ["RGB", "RGBA", "L", "P", "I;16"], "JPEG": ["RGB", "L"], "GIF": ["P"], "BMP": ["RGB"],
    "TIFF": ["RGB", "CMYK"], "WEBP": ["RGB"],
}.items() for mode in modes]


@st.composite
def damaged_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[: draw(st.integers(0, len(data)))])


FILES = st.one_of(st.binary(max_size=300), damaged_images())
# PIL warns about the damage it works around (corrupt EXIF, short tags): expected here.
PIL_COMPLAINS = pytest.mark.filterwarnings("ignore::UserWarning:PIL", "ignore::RuntimeWarning:PIL")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_images")


@PIL_COMPLAINS
@FUZZ
@given(FILES, st.sampled_from([".png", ".jpg", ".gif", ".bmp", ".tif", ".webp"]))
def test_damaged_image_files_decode_or_raise_a_data_error(image_folder, data, suffix):
    path = image_folder / f"image{suffix}"
    path.write_bytes(data)
    try:
        image = read_rgb(path)
    except DataError:
        return
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


@PIL_COMPLAINS
@FUZZ
@given(FILES)
def test_damaged_images_in_an_aligned_dataset_load_or_raise_a_data_error(image_folder, data):
    split = image_folder / "train"
    split.mkdir(exist_ok=True)
    (split / "1.png").write_bytes(data)
    section = DataSection(dataset={"name": "aligned"}, root=image_folder, load_size=16, crop_size=16, cache="none")
    try:
        sample = AlignedDataset(Params(), section, "train", train=True)[0]
    except DataError:
        return
    assert sample["input"].shape == sample["target"].shape == (3, 16, 16)


# ----------------------------------------------------------------- translate
INPUT_NAMES = ["x.jpg", "x.png", "y.jpg", "bad.png", "z.webp"]
OUTPUTS = ["new", "inputs", "inputs/sub", "inputs/sub/..", "an input file", "under a file"]


def hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@settings(FUZZ, max_examples=30)
@given(
    names=st.lists(st.sampled_from(INPUT_NAMES), min_size=1, max_size=4, unique=True),
    sizes=st.lists(st.tuples(st.integers(32, 96), st.integers(32, 96)), min_size=4, max_size=4),
    tile=st.integers(1, 160) | st.just(0),
    overlap=st.integers(-1, 40),
    batch_size=st.sampled_from([1, 2, 3, 0]),
    output=st.sampled_from(OUTPUTS),
    one_file=st.booleans(),
    on_bad_image=st.sampled_from(["error", "skip"]),
)
def test_translate_options_succeed_or_raise_one_clear_line_and_never_touch_an_input(
    tiny_run, names, sizes, tile, overlap, batch_size, output, one_file, on_bad_image
):
    with tempfile.TemporaryDirectory() as folder:
        inputs = Path(folder) / "inputs"
        inputs.mkdir()
        for name, (width, height) in zip(names, sizes):
            if name == "bad.png":
                (inputs / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
            else:
                Image.fromarray(np.full((height, width, 3), len(name) * 20, np.uint8)).save(inputs / name)
        (Path(folder) / "a file").write_text("not a folder")
        target = {"new": Path(folder) / "out", "an input file": inputs / names[0],
                  "under a file": Path(folder) / "a file" / "out"}.get(output, Path(folder) / output)
        source = inputs / names[0] if one_file else inputs
        before = hashes(inputs)
        try:
            written = translate_paths(tiny_run, source, target, device="cpu", tile=tile, overlap=overlap,
                                      batch_size=batch_size, on_bad_image=on_bad_image)
        except I2IError as error:
            assert "\n" not in str(error) and str(error)
            written = []
        assert {name: digest for name, digest in hashes(inputs).items() if name in before} == before
        sizes_by_name = dict(zip(names, sizes))
        for path in written:
            original = path.name[: -len(".png")] if path.name.count(".") > 1 else next(
                n for n in names if Path(n).stem == path.stem)
            with Image.open(path) as image:
                assert image.size == sizes_by_name[original]


# ------------------------------------------------------- recipe values near the components' limits
@st.composite
def crops_near_the_multiple(draw) -> tuple[int, int]:
    """(U-Net downsamplings, crop): a crop on, or one pixel off, a small multiple of 2**downsamplings."""
    num_downs = draw(st.integers(2, 5))
    multiple = 2**num_downs
    return num_downs, max(1, multiple * draw(st.integers(1, 3)) + draw(st.sampled_from([-1, 0, 0, 0, 1])))


# One train value at a time at or just past a limit; the rest stay usable, so that most examples train.
TRAIN_EDGES = (
    [("lr", value) for value in (1e-300, 1e-12, 1.0, 1.5, 1e300, float("inf"), float("nan"))]
    + [("betas", value) for value in ((0.0, 0.0), (0.9, 0.9999), (-0.1, 0.999), (0.5, 1.0), (1.0, 0.5))]
    + [("seed", value) for value in (2**63 - 1, -1, 2**63, 2**70)]
)


@settings(FUZZ, max_examples=40)
@given(
    sizes=crops_near_the_multiple(),
    load_extra=st.integers(0, 8),
    norm=st.sampled_from(["batch", "instance", "none"]),
    n_layers=st.integers(1, 4),
    batch_size=st.sampled_from([1, 2, 3, 5, 2**20]),
    edge=st.none() | st.sampled_from(TRAIN_EDGES),
)
def test_recipe_values_near_the_limits_train_or_raise_a_clear_error(
    tmp_path_factory, sizes, load_extra, norm, n_layers, batch_size, edge
):
    """Validated, checked against the components' limits as ``i2i run`` does, then one training
    step: nothing but an I2IError (a RecipeError above all) may come out."""
    from i2i.engine.limits import check_limits
    from i2i.engine.trainer import Trainer

    num_downs, crop = sizes
    data = tiny_recipe(
        model={"generator": {"name": "unet", "params": {"num_downs": num_downs, "ngf": 4, "norm": norm}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": n_layers, "norm": norm}}},
        data={"dataset": {"name": "synthetic", "params": {"length": 3, "size": 40}}, "load_size": crop + load_extra,
              "crop_size": crop},
        train={"batch_size": batch_size, "max_steps": 1, "tensorboard": False, "engine": "reference",
               **dict([edge] if edge else [])},
    )
    try:
        recipe = Recipe.from_dict(data)
        check_limits(recipe)
    except RecipeError:
        return
    try:
        Trainer(recipe, run_dir=tmp_path_factory.mktemp("limits")).fit()
    except I2IError:
        pass


# ------------------------------------------------------------- weights files from anywhere
METADATA_KEYS = ["recipe", "in_channels", "out_channels", "size_multiple", "step"]
NUMBER_TEXTS = st.one_of(
    st.integers(-(2**70), 2**70).map(str), st.text(max_size=10),
    st.sampled_from(["0", "-64", "1", "3", "32", "64", "65", "1e3", "nan", " 3", "3.0", "9" * 5000]),
)
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.uint8,
          torch.bool, torch.complex64]
FILLS = [None, float("nan"), float("inf"), -float("inf"), 1e30, 0.0]


def edited_recipe_yaml(edits) -> str:
    data = copy.deepcopy(tiny_recipe())
    for path, value in edits:
        set_path(data, path, value)
    return yaml.safe_dump(data)


RECIPE_TEXTS = st.one_of(EDITS.map(edited_recipe_yaml), VALUES.map(yaml.safe_dump), st.text(max_size=40))


@functools.cache
def tiny_weights() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from i2i.engine.build import build_generator

    recipe = Recipe.from_dict(tiny_recipe())
    generator = build_generator(recipe, 3, 3)
    metadata = {"recipe": recipe.to_yaml(), "in_channels": "3", "out_channels": "3",
                "size_multiple": str(generator.size_multiple), "step": "1"}
    return {k: v.detach().clone().contiguous() for k, v in generator.state_dict().items()}, metadata


@settings(FUZZ, max_examples=60)
@given(
    changes=st.dictionaries(st.sampled_from(METADATA_KEYS), st.none() | NUMBER_TEXTS, max_size=3),
    recipe_text=st.none() | RECIPE_TEXTS,
    tensor=st.integers(0, 10_000),
    dtype=st.none() | st.sampled_from(DTYPES),
    fill=st.sampled_from(FILLS),
)
def test_weights_files_with_random_metadata_and_tensors_load_or_raise_one_clear_error(
    changes, recipe_text, tensor, dtype, fill
):
    """Random metadata values and one tensor of a random dtype and values: i2i.load and a
    translation succeed or raise one I2IError, and nothing is written beside the file."""
    import i2i
    from i2i.engine.checkpoint import weights_with_checksum

    tensors, metadata = tiny_weights()
    tensors = dict(tensors)
    name = sorted(tensors)[tensor % len(tensors)]
    changed = tensors[name].clone()
    if fill is not None and changed.is_floating_point():
        changed.view(-1)[0] = fill
    tensors[name] = changed if dtype is None else changed.to(dtype)
    metadata = {k: v for k, v in {**metadata, **changes}.items() if v is not None}
    if recipe_text is not None:
        metadata["recipe"] = recipe_text
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "g.safetensors"
        file.write_bytes(weights_with_checksum(tensors, metadata))
        try:
            translator = i2i.load(file, device="cpu")
            output = translator(np.zeros((20, 30, 3), np.uint8))
            assert output.shape[:2] == (20, 30)
        except I2IError as error:
            assert str(error) and len(str(error)) < 3000
        assert [p.name for p in Path(folder).iterdir()] == ["g.safetensors"]


# ------------------------------------------------------------------- the engine cache
CACHE_PATHS = [["key"], ["key", "device"], ["key", "fixed"], ["settings"], ["settings", "precision"],
               ["settings", "channels_last"], ["settings", "compile"], ["reasons"], ["reasons", "precision"],
               ["comparisons"], ["comparisons", "0"], ["comparisons", "0", "speedup"], ["comparisons", "0", "best"],
               ["comparisons", "0", "best_seconds"], ["complete"], ["planned_steps"]]


@functools.cache
def cache_fuzz_recipe() -> Recipe:
    return Recipe.from_dict(tiny_recipe(train={"engine_probe": True, "precision": "fp32"}))


def choose_with_cache(folder: str, notes: list[str]):
    """The engine's choice for ``cache_fuzz_recipe`` with the probe on and its cache in ``folder``
    (steps that cost nothing)."""
    from i2i.engine.autotune import choose_engine

    with mock.patch.dict(os.environ, {"I2I_CACHE": folder}):
        os.environ.pop("I2I_ENGINE_PROBE", None)
        return choose_engine(cache_fuzz_recipe(), torch.device("cpu"), (3, 3), lambda s: lambda: None, 1000, notes.append)


CACHE_EDITS = st.lists(st.tuples(st.sampled_from(CACHE_PATHS), st.one_of(SCALARS, VALUES)), min_size=1, max_size=3)
# Mostly edits of a valid entry (the damage a reader could miss), else any JSON, else any bytes.
CACHE_DAMAGE = st.one_of(CACHE_EDITS, CACHE_EDITS, CACHE_EDITS, VALUES.map(lambda v: ("whole", v)), st.binary(max_size=40))


@settings(FUZZ, max_examples=80)
@given(damage=CACHE_DAMAGE)
def test_a_random_engine_cache_entry_ends_in_a_choice_with_the_recipes_settings(damage):
    """Random JSON (whole, or edits of a valid entry) or bytes where the cache entry is: the engine
    still chooses, keeps the recipe's precision, and leaves a valid entry and nothing else."""
    from i2i.engine.autotune import CacheEntry

    with tempfile.TemporaryDirectory() as folder:
        file = choose_with_cache(folder, []).cache_file
        entry = json.loads(file.read_text())
        if isinstance(damage, bytes):
            file.write_bytes(damage)
        elif isinstance(damage, tuple):
            file.write_text(json.dumps(damage[1]))
        else:
            for path, value in damage:
                set_path(entry, path, value)
            file.write_text(json.dumps(entry))
        notes: list[str] = []
        choice = choose_with_cache(folder, notes)
        assert choice.settings["precision"] == "fp32" and choice.reasons["precision"] == "set in the recipe"
        assert all(n.startswith(("ignoring the engine cache at", "engine probe:")) for n in notes), notes
        CacheEntry.model_validate_json(file.read_bytes())
        assert sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*")) == ["engine", f"engine/{file.name}"]


# ------------------------------------------------------- method params (issue 33)
EXTREME_NUMBERS = st.one_of(
    st.floats(), st.integers(-(2**80), 2**80),
    st.sampled_from([float("inf"), -float("inf"), float("nan"), 1e308, 1e-300, 0.0, 1e4, 1e4 + 1, 10**12, 10**21]),
)
METHOD_PARAMS = {
    "cyclegan": ["lambda_a", "lambda_b", "lambda_identity", "pool_size"],
    "cut": ["lambda_gan", "lambda_nce", "nce_t", "num_patches", "head_channels", "nce_layers", "mode"],
    "pix2pix": [],
}


def finite_floats(value) -> bool:
    if isinstance(value, float):
        return np.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(finite_floats(v) for v in value)
    if isinstance(value, Params):
        return all(finite_floats(getattr(value, name)) for name in type(value).model_fields)
    return True


@settings(FUZZ, max_examples=80)
@given(
    method=st.sampled_from(sorted(METHOD_PARAMS)),
    values=st.lists(st.tuples(st.integers(0, 6), st.one_of(EXTREME_NUMBERS, SCALARS, st.lists(EXTREME_NUMBERS, max_size=4))),
                    max_size=4),
    train=st.dictionaries(st.sampled_from(["eval_bn_batches", "max_steps", "log_every", "epochs", "keep_checkpoints"]),
                          EXTREME_NUMBERS, max_size=2),
    start_step=st.one_of(st.none(), EXTREME_NUMBERS),
)
def test_random_method_and_train_params_validate_finite_or_raise_a_recipe_error(method, values, train, start_step):
    """Any value for any method param (and the train counts beside them) is a RecipeError or a
    recipe whose every float is finite and whose limit check answers in one RecipeError."""
    from i2i.engine.limits import check_limits

    names = METHOD_PARAMS[method]
    params = {names[i % len(names)]: value for i, value in values} if names else {}
    recipe = tiny_recipe(method={"name": method, "params": params}, train={**train, "max_steps": 2})
    if method != "pix2pix":
        recipe.update(model={"generator": {"name": "resnet", "params": {"ngf": 8, "n_blocks": 2}},
                             "discriminator": {"name": "patchgan", "params": {"ndf": 8, "n_layers": 2}}},
                      losses=[{"name": "gan", "params": {"mode": "lsgan"}}], data={**recipe["data"], "dataset": {"name": "unaligned"}})
    if start_step is not None:
        recipe["train"]["ema"] = {"start_step": start_step}
    try:
        parsed = Recipe.from_dict(recipe)
        check_limits(parsed)
    except RecipeError:
        return
    assert finite_floats(parsed.method.params) and finite_floats(parsed.train)


# ------------------------------------------------------- report and push inputs (issue 33)
LOG_LINES = st.lists(st.one_of(
    VALUES.map(json.dumps),
    st.fixed_dictionaries({"step": EXTREME_NUMBERS | SCALARS}, optional={"G_GAN": EXTREME_NUMBERS | SCALARS,
                          "eval_fid": EXTREME_NUMBERS | SCALARS, "eval_images": EXTREME_NUMBERS | SCALARS,
                          "eval_mode": SCALARS, "steps_per_s": EXTREME_NUMBERS | SCALARS}).map(json.dumps),
    st.text(max_size=30),
), max_size=5)


def damaged_run(run: Path, folder: str, lines: list[str], environment: str) -> Path:
    copy_ = Path(folder) / "run"
    shutil.copytree(run, copy_)
    with open(copy_ / "log.jsonl", "a") as log:
        log.write("".join(line.replace("\n", " ") + "\n" for line in lines))
    (copy_ / "environment.json").write_text(environment)
    return copy_


@settings(FUZZ, max_examples=20)
@given(lines=LOG_LINES, environment=st.one_of(VALUES.map(json.dumps), st.text(max_size=20)))
def test_a_report_of_damaged_run_files_renders(tiny_run, lines, environment):
    """Random records (any JSON, records with random step and values, text) appended to a run's
    log and any environment.json: `i2i report` writes the page, the good records on it."""
    from i2i.report import build_report

    with tempfile.TemporaryDirectory() as folder:
        run = damaged_run(tiny_run, folder, lines, environment)
        page = build_report(run, warn=lambda note: None).read_text()
        assert "G_GAN" in page


@settings(FUZZ, max_examples=30)
@given(lines=LOG_LINES, results=LOG_LINES, quality=st.lists(st.fixed_dictionaries(
    {"kind": st.sampled_from(["quality", "speed"]) | SCALARS, "checkpoint": st.just("RUN") | SCALARS,
     "steps_trained": EXTREME_NUMBERS | SCALARS, "split": SCALARS, "mode": SCALARS,
     "metrics": VALUES | st.fixed_dictionaries({"images": EXTREME_NUMBERS, "fid": EXTREME_NUMBERS | SCALARS})}),
    max_size=3))
def test_the_model_card_of_damaged_records_lists_only_sound_ones(tiny_run, lines, results, quality):
    """Random log and `--results` records (what `i2i push` quotes): the card's evaluations come out,
    each with a count of images and numbers or nothing as metrics, the rest passed over with a note."""
    from i2i.model_card import model_card, recorded_evaluations

    with tempfile.TemporaryDirectory() as folder:
        run = damaged_run(tiny_run, folder, lines, "{}")
        records = [json.dumps(r).replace('"RUN"', json.dumps(str(run))) for r in quality]
        file = Path(folder) / "quality.jsonl"
        file.write_text("".join(line.replace("\n", " ") + "\n" for line in [*results, *records]))
        found = recorded_evaluations(run, 4, file, warn=lambda note: None)
        for evaluation in found:
            assert isinstance(evaluation.images, int) and evaluation.step <= 4
            assert all(v is None or isinstance(v, float) for v in evaluation.metrics.values())
        recipe = Recipe.from_file(run / "recipe.yaml")
        model_card("someone/model", recipe, recipe.to_yaml(), 4, "0", None, found)


# ------------------------------------------------------------------ Hub ids (issue 33)
@settings(FUZZ, max_examples=300)
@given(st.one_of(
    st.text(max_size=20),
    st.text("ab-._/@1", max_size=14),
    st.tuples(st.text("a-._1", max_size=6), st.text("b-._2", max_size=6)).map("/".join),
))
def test_a_hub_id_is_accepted_only_where_huggingface_hub_accepts_it(spec):
    """Any text as ``hf://...`` or ``--repo``: a HubError in one line, or an id huggingface_hub's
    own validator takes (so its HFValidationError never reaches the user)."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import validate_repo_id

    from i2i.hub import HubError, parse_spec

    try:
        repo_id, _ = parse_spec("hf://" + spec)
    except HubError as error:
        assert "\n" not in str(error)
        return
    validate_repo_id(repo_id)
