"""Issue 33 (reliability, round four, part one): method params that cannot train, damaged run
files, malformed Hub ids, weights that turn into NaN, stale texts. Each case failed on the code
before it; each ends in success or one clear line, non-zero, with nothing written or lost."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import i2i
from i2i.cli import app
from i2i.engine.checkpoint import CheckpointError
from i2i.recipe import Recipe, RecipeError

from conftest import tiny_recipe
from test_reliability3_inputs import assert_one_line, run_cli, tiny_weights, write_weights

TINY_RESNET = {"generator": {"name": "resnet", "params": {"ngf": 8, "n_blocks": 2}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 8, "n_layers": 2}}}
LSGAN = [{"name": "gan", "params": {"mode": "lsgan"}}]


def unpaired_recipe(method: str, **params) -> dict:
    return tiny_recipe(method={"name": method, "params": params}, model=TINY_RESNET, losses=LSGAN,
                       data={"dataset": {"name": "unaligned"}})


# -- method and train params nothing sensible trains with ----------------------------------
ABSURD = {
    "an infinite cycle weight": (unpaired_recipe("cyclegan", lambda_a=float("inf")), "method.params.lambda_a"),
    "a cycle weight of 1e300": (unpaired_recipe("cyclegan", lambda_b=1e300), "method.params.lambda_b"),
    "lambda_identity 1e308": (unpaired_recipe("cyclegan", lambda_identity=1e308), "method.params.lambda_identity"),
    "nce_t inf": (unpaired_recipe("cut", nce_t=float("inf")), "method.params.nce_t"),
    "nce_t 1e-300": (unpaired_recipe("cut", nce_t=1e-300), "method.params.nce_t"),
    "lambda_nce 1e300": (unpaired_recipe("cut", lambda_nce=1e300), "method.params.lambda_nce"),
    "num_patches 10^12": (unpaired_recipe("cut", num_patches=10**12), "method.params.num_patches"),
    "duplicate nce_layers": (unpaired_recipe("cut", nce_layers=[0, 4, 4]), "layer 4 is listed more than once"),
    "a negative nce layer": (unpaired_recipe("cut", nce_layers=[-1]), "method.params.nce_layers.0"),
    "eval_bn_batches 10^21": (tiny_recipe(train={"eval_bn_batches": 10**21}), "train.eval_bn_batches"),
    "ema.start_step 10^26": (tiny_recipe(train={"ema": {"start_step": 10**26}}), "train.ema.start_step"),
    "ema.start_step past max_steps": (tiny_recipe(train={"max_steps": 4, "ema": {"start_step": 4}}), "never start"),
    "epochs 10^21": (tiny_recipe(train={"epochs": 10**21}), "train.epochs"),
    "a loss weight 1e308": (tiny_recipe(losses=[{"name": "gan"}, {"name": "l1", "weight": 1e308}]), "losses.1.weight"),
    "an infinite network param": (tiny_recipe(model={"generator": {"name": "unet", "params": {"init_std": float("inf")}}}),
                            "model.generator.params.init_std"),
}


@pytest.mark.parametrize("case", list(ABSURD))
def test_params_nothing_trains_with_are_refused_at_validate(case, write_recipe, monkeypatch, capsys):
    recipe, fragment = ABSURD[case]
    with pytest.raises(RecipeError, match=fragment.replace(".", r"\.")):
        Recipe.from_dict(recipe)
    code, err = run_cli(["validate", write_recipe(recipe)], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and fragment in err, err


def test_the_published_method_params_still_validate():
    for method in ("cyclegan", "cut"):
        Recipe.from_dict(unpaired_recipe(method))
    Recipe.from_dict(unpaired_recipe("cut", mode="fastcut", nce_layers=[0, 4, 8, 12, 16], nce_t=0.07, num_patches=256))


def test_pix2pix_on_unpaired_data_is_refused_naming_the_dataset(write_recipe, monkeypatch, capsys):
    for dataset in ("unaligned", "unpaired_aligned"):
        with pytest.raises(RecipeError, match=f"method pix2pix trains on pairs .* dataset {dataset} gives unpaired"):
            Recipe.from_dict(tiny_recipe(data={"dataset": {"name": dataset}}))
    code, err = run_cli(["validate", write_recipe(tiny_recipe(data={"dataset": {"name": "unaligned"}}))], monkeypatch, capsys)
    assert code == 2 and "data.dataset.name" in err


@pytest.mark.parametrize("role", ["generator_ba", "discriminator_a"])
@pytest.mark.parametrize("method", ["pix2pix", "cut"])
def test_a_network_the_method_does_not_train_is_an_error(role, method):
    spec = TINY_RESNET["generator" if role.startswith("generator") else "discriminator"]
    recipe = tiny_recipe(model={role: spec}) if method == "pix2pix" else unpaired_recipe("cut")
    recipe["model"] = {**recipe["model"], role: spec}
    with pytest.raises(RecipeError, match=f"model.{role}: method {method} trains no {role}"):
        Recipe.from_dict(recipe)


# -- networks too large to build ------------------------------------------------------------
TOO_LARGE = {
    "CUT heads of 10^5 channels": (unpaired_recipe("cut", head_channels=10**5, nce_layers=[0, 4], num_patches=16),
                                   "method.params: the networks take"),
    "a U-Net of ngf 100000": (tiny_recipe(model={"generator": {"name": "unet", "params": {"ngf": 100000, "num_downs": 5}}}),
                              "model.generator.params: the networks take"),
}


@pytest.mark.parametrize("case", list(TOO_LARGE))
def test_networks_too_large_for_memory_are_refused_before_allocating(case, write_recipe, tmp_path, monkeypatch, capsys):
    recipe, fragment = TOO_LARGE[case]
    path = write_recipe(recipe)
    code, err = run_cli(["validate", path], monkeypatch, capsys)
    assert code == 2 and fragment in err and "more than the" in err and "Traceback" not in err, err
    code, err = run_cli(["run", path, "--out", tmp_path / "run"], monkeypatch, capsys)
    assert code == 2 and fragment in err, err
    assert not (tmp_path / "run").exists()


def test_an_embedded_recipe_with_a_generator_too_large_is_refused_before_building(tmp_path, monkeypatch):
    tensors, metadata = tiny_weights()
    huge = tiny_recipe(model={"generator": {"name": "unet", "params": {"ngf": 100000, "num_downs": 5}}})
    file = write_weights(tmp_path / "g.safetensors", tensors, {**metadata, "recipe": Recipe.from_dict(huge).to_yaml()})
    with pytest.raises(RecipeError, match="the networks take .* to hold"):
        i2i.load(file, device="cpu")


@pytest.mark.parametrize("key", ["size_multiple", "crop_size"])
def test_metadata_asking_for_passes_too_large_for_memory_is_refused(key, tmp_path, monkeypatch):
    # A generator pass at 8192 px takes gigabytes; a machine of 2 GiB cannot hold it.
    monkeypatch.setattr("i2i.engine.limits.available_memory", lambda: 2 * 2**30)
    tensors, metadata = tiny_weights()
    if key == "size_multiple":
        metadata["size_multiple"] = "8192"
    else:
        recipe = tiny_recipe(data={"load_size": 8192, "crop_size": 8192})
        metadata["recipe"] = Recipe.from_dict(recipe).to_yaml()
    file = write_weights(tmp_path / "g.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match=f"{key} 8192.* takes about .* more than the 2.0 GiB"):
        i2i.load(file, device="cpu")


# -- --set keys -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["losses.².weight", "losses.²", "losses." + "9" * 5000 + ".weight", "losses.0x1.weight",
                                 "losses.-1.weight", "losses.٣.weight"])
def test_a_set_key_whose_list_index_is_no_plain_number_is_one_line(key, write_recipe, monkeypatch, capsys):
    with pytest.raises(RecipeError, match="no such list item"):
        Recipe.from_file(write_recipe(tiny_recipe()), [f"{key}=3"])
    code, err = run_cli(["validate", write_recipe(tiny_recipe()), "--set", f"{key}=3"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and len(err) < 400, err


# -- output_dir '' ----------------------------------------------------------------------------
def test_an_empty_output_dir_is_refused_from_the_recipe_set_and_python(tmp_path, monkeypatch, capsys, write_recipe):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tiny_recipe(train={"max_steps": 1}))
    before = sorted(tmp_path.iterdir())
    code, err = run_cli(["run", path, "--set", "output_dir=''"], monkeypatch, capsys)
    assert code == 2 and "output_dir" in err and "current folder" in err, err
    with pytest.raises(RecipeError, match="output_dir: .*empty"):
        i2i.train(path, output_dir="")
    with pytest.raises(RecipeError, match="output_dir: .*empty"):
        i2i.train(Recipe.from_dict(tiny_recipe()), output_dir="")
    assert sorted(tmp_path.iterdir()) == before


# -- i2i report on damaged run files ----------------------------------------------------------
DAMAGED_LOG = {
    "a step that is a string": {"step": "3", "G_GAN": 1.0},
    "a step that is null": {"step": None, "G_GAN": 1.0},
    "a record that is a number": 7,
    "a record that is a list": [1, 2],
    "a line of bad JSON": "{not json",
    "a huge number": {"step": 5, "G_GAN": 10**400},
}


@pytest.mark.parametrize("case", list(DAMAGED_LOG))
def test_report_passes_over_damaged_log_records_and_renders_the_rest(case, tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    damaged = DAMAGED_LOG[case]
    lines = (run / "log.jsonl").read_text().splitlines()
    lines.insert(1, damaged if isinstance(damaged, str) else json.dumps(damaged))
    (run / "log.jsonl").write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "G_GAN" in page and "losses.png" in page
    if case != "a huge number":
        assert "Passed over" in page and "log.jsonl:2" in page


def test_report_passes_over_an_environment_that_is_no_object(tiny_run, tmp_path):
    run = shutil.copytree(tiny_run, tmp_path / "run")
    (run / "environment.json").write_text("[1, 2]")
    result = CliRunner().invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert "environment.json: not a JSON object" in (run / "report.html").read_text()


# -- i2i push with damaged inputs -----------------------------------------------------------
@pytest.fixture
def pushable(tiny_run, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import HfApi

    uploads = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, *a, **k: None)
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo, operations, **k: uploads.append(operations))
    return shutil.copytree(tiny_run, tmp_path / "run"), uploads


DAMAGED_PUSH = {
    "--results of bad JSON": ("results", "{oops\n"),
    "--results of speed records": ("results", json.dumps({"kind": "speed", "configs": {}}) + "\n"),
    "--results with a record missing its metrics": ("results", json.dumps({"kind": "quality", "checkpoint": "x"}) + "\n"),
    "--results holding a list": ("results", "[1]\n"),
    "an evaluation record with a string step": ("log", json.dumps({"step": "2", "eval_fid": 3.0}) + "\n"),
    "an evaluation record without its fields": ("log", json.dumps({"step": 2, "eval_fid": 3.0}) + "\n"),
    "an evaluation record with text metrics": ("log", json.dumps({"step": 2, "eval_images": 4, "eval_fid": "x"}) + "\n"),
    "a log line of bad JSON": ("log", "{oops\n"),
}


@pytest.mark.parametrize("case", list(DAMAGED_PUSH))
def test_push_passes_over_damaged_records_with_a_note(case, pushable, tmp_path, monkeypatch, capsys):
    run, uploads = pushable
    where, text = DAMAGED_PUSH[case]
    results = tmp_path / "quality.jsonl"
    results.write_text(text if where == "results" else "")
    if where == "log":
        with open(run / "log.jsonl", "a") as log:
            log.write(text + json.dumps({"step": 4, "G_GAN": 1.0}) + "\n")
    code = run_cli_ok(["push", run, "--repo", "someone/model", "--results", results], monkeypatch)
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err and len(uploads) == 1, err
    if "speed" not in case:
        assert "warning" in err and "not in the model card" in err, err


def run_cli_ok(arguments: list, monkeypatch) -> int:
    from i2i.cli import main

    monkeypatch.setattr(sys, "argv", ["i2i", *map(str, arguments)])
    try:
        main()
    except SystemExit as exited:
        return exited.code or 0
    return 0


# -- malformed Hub ids ----------------------------------------------------------------------
BAD_IDS = ["../x", "owner/-bad-", "owner/bad-", "owner/.x", "a--b/c", "own..er/x", "owner/x.git", "owner/" + "x" * 97,
           "owner/na me", "/x", "owner/", "x"]


@pytest.mark.parametrize("repo", BAD_IDS)
def test_malformed_hub_ids_are_one_line_before_the_hub_is_asked(repo, tiny_run, monkeypatch, capsys, tmp_path):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setattr("huggingface_hub.HfApi.create_repo", lambda *a, **k: pytest.fail("the Hub was asked"))
    code, err = run_cli(["push", tiny_run, "--repo", repo], monkeypatch, capsys)
    assert_one_line(code, err, "not a Hub repository id")
    Image.new("RGB", (40, 30)).save(tmp_path / "x.png")
    code, err = run_cli(["translate", "--checkpoint", f"hf://{repo}", "--input", tmp_path / "x.png",
                         "--output", tmp_path / "out"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err and "not a Hub" in err, err
    assert not (tmp_path / "out").exists()


def test_good_hub_ids_pass_the_check():
    from i2i.hub import check_repo_id

    for repo in ("owner/name", "Own-er_1/na.me-2", "a/b", "o/" + "x" * 96):
        check_repo_id(repo)


# -- weights that overflow -------------------------------------------------------------------
def overflowing_weights(tmp_path: Path) -> Path:
    tensors, metadata = tiny_weights()
    tensors = {name: t * 1e30 if name.endswith("weight") and t.ndim == 4 else t for name, t in tensors.items()}
    assert all(torch.isfinite(t).all() for t in tensors.values())
    return write_weights(tmp_path / "g.safetensors", tensors, metadata)


def test_weights_that_overflow_to_nan_are_one_line_not_a_black_image(tmp_path, monkeypatch, capsys):
    file = overflowing_weights(tmp_path)
    with pytest.raises(CheckpointError, match="NaN or infinite values .* weights overflow"):
        i2i.load(file, device="cpu")(np.zeros((32, 32, 3), np.uint8))
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    code, err = run_cli(["translate", "--checkpoint", file, "--input", tmp_path / "x.png", "--output", tmp_path / "out"],
                        monkeypatch, capsys)
    assert_one_line(code, err, "weights overflow")
    assert not list((tmp_path / "out").glob("*.png"))
    code, err = run_cli(["export", "--checkpoint", file, "--output", tmp_path / "g.onnx"], monkeypatch, capsys)
    assert_one_line(code, err, "weights overflow")
    assert not (tmp_path / "g.onnx").exists()


# -- an ONNX file whose metadata names the other mode -------------------------------------------
def test_an_onnx_file_claiming_the_other_mode_is_refused(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from i2i.export import ExportError, export_generator

    eval_file = export_generator(tiny_run, "onnx", tmp_path / "eval.onnx", mode="eval").path
    instance_file = export_generator(tiny_run, "onnx", tmp_path / "instance.onnx", mode="instance").path
    eval_meta = {p.key: p.value for p in onnx.load(str(eval_file)).metadata_props}
    model = onnx.load(str(instance_file))  # the instance graph with the eval export's metadata
    del model.metadata_props[:]
    model.metadata_props.extend(onnx.StringStringEntryProto(key=k, value=v) for k, v in eval_meta.items())
    onnx.save(model, str(tmp_path / "swapped.onnx"))
    with pytest.raises(ExportError, match="not the eval-mode generator its metadata names"):
        i2i.load(tmp_path / "swapped.onnx", mode="eval")
    model = onnx.load(str(instance_file))  # only the mode edited
    for prop in model.metadata_props:
        if prop.key == "mode":
            prop.value = "eval"
    onnx.save(model, str(tmp_path / "renamed.onnx"))
    with pytest.raises(ExportError, match="names mode eval, but its export checked the instance-mode generator"):
        i2i.load(tmp_path / "renamed.onnx", mode="eval")
    assert i2i.load(instance_file, mode="instance")(np.zeros((32, 32, 3), np.uint8)).shape == (32, 32, 3)
    notes = []
    for prop in model.metadata_props:
        if prop.key == "mode":
            prop.value = "instance"
    kept = [p for p in model.metadata_props if p.key not in ("check_size", "check_output")]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(tmp_path / "older.onnx"))
    i2i.load(tmp_path / "older.onnx", mode="instance", warn=notes.append)
    assert notes and "its own claim (mode instance) is trusted" in notes[0]


# -- CycleGAN resumed with another crop ---------------------------------------------------------
def test_cyclegan_resumed_with_another_crop_empties_its_pools_and_says_so(fake_data_root, tmp_path, monkeypatch, capsys,
                                                                         write_recipe, one_torch_thread):
    recipe = unpaired_recipe("cyclegan", pool_size=4)
    recipe["data"] = {**recipe["data"], "root": str(fake_data_root)}
    recipe["train"] = {**recipe["train"], "max_steps": 2, "checkpoint_every": 2, "tensorboard": False}
    path = write_recipe(recipe)
    assert run_cli_ok(["run", path, "--out", tmp_path / "run"], monkeypatch) == 0, capsys.readouterr()
    capsys.readouterr()
    arguments = ["run", path, "--out", tmp_path / "run", "--resume", "--allow-changes",
                 "--set", "data.crop_size=16", "--set", "data.load_size=20", "--set", "train.max_steps=3"]
    code = run_cli_ok(arguments, monkeypatch)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "image pool fake_b holds 32 px images, not data.crop_size 16: it starts empty" in out


# -- a run that fails before writing anything leaves no folder ------------------------------------
def test_a_run_failing_on_its_first_download_leaves_no_empty_run_directory(tmp_path, monkeypatch, capsys, write_recipe):
    from i2i.data.download import DownloadError

    def offline(*args, **kwargs):
        raise DownloadError("no network")

    monkeypatch.setattr("i2i.run.ensure_data", offline)
    path = write_recipe(tiny_recipe())
    code, err = run_cli(["run", path, "--out", tmp_path / "runs" / "x"], monkeypatch, capsys)
    assert_one_line(code, err, "no network")
    assert not (tmp_path / "runs").exists()


# -- stale words ---------------------------------------------------------------------------------
def test_help_texts_name_every_method_and_the_default_mode():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"]).output
    assert "CycleGAN" in top and "Paired image-to-image translation (pix2pix family)" not in top
    assert "CycleGAN" in runner.invoke(app, ["models", "--help"]).output
    assert "instance by default" in " ".join(runner.invoke(app, ["demo", "--help"]).output.split())
    assert "eval-mode export" not in runner.invoke(app, ["translate", "--help"]).output
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "Pluggable paired" not in pyproject


def test_the_catalogue_shows_published_counts_of_cyclegan_sets():
    from i2i.data.download import CATALOGUE

    assert CATALOGUE["cyclegan/horse2zebra"].splits == {"trainA": 1067, "trainB": 1334, "testA": 120, "testB": 140}
    assert "?" not in CliRunner().invoke(app, ["data", "list"]).output


def test_the_run_summary_counts_unpaired_images_as_images(fake_data_root):
    from i2i.engine.build import build_dataset
    from i2i.run import _training_samples

    recipe = Recipe.from_dict({**unpaired_recipe("cyclegan"),
                               "data": {"dataset": {"name": "unaligned"}, "root": str(fake_data_root),
                                        "load_size": 36, "crop_size": 32}})
    assert _training_samples(build_dataset(recipe)) == "3 input and 4 target images (unpaired)"
    assert _training_samples(build_dataset(Recipe.from_dict(tiny_recipe()))) == "8 training pairs"
