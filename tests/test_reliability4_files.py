"""Issue 34: files reached through an embedded recipe, a planted link or a manifest; a CycleGAN
checkpoint i2i refused itself; a resume SIGTERM could not stop; metadata trusted unchecked;
tracebacks on tiny images, a planted FIFO and unwritable results; and the minor items."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import tiny_recipe
from i2i.engine.checkpoint import CheckpointError, weights_with_checksum
from i2i.errors import I2IError
from i2i.recipe import Recipe
from test_reliability3_files import one_line, run_cli
from test_unpaired import unpaired_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SECRET = b"the user's file, which no i2i command may change"


def weights_file(path: Path, recipe: dict, channels: tuple[int, int] = (3, 3), network: str = "generator") -> Path:
    """A generator .safetensors as a run writes it, with ``recipe`` embedded, freshly initialised."""
    from i2i.engine.build import build_generator

    built = Recipe.from_dict(recipe)
    spec = getattr(built.model, network, None) or built.model.generator
    generator = build_generator(built.model_copy(update={"model": built.model.model_copy(update={"generator": spec})}),
                                *channels)
    metadata = {"recipe": yaml.safe_dump(recipe), "in_channels": str(channels[0]), "out_channels": str(channels[1]),
                "size_multiple": str(generator.size_multiple), "network": network}
    path.write_bytes(weights_with_checksum({k: v.contiguous() for k, v in generator.state_dict().items()}, metadata))
    return path


def assert_refused(code: int, err: str, *fragments: str) -> None:
    line = one_line(err)
    assert code != 0, err
    for fragment in fragments:
        assert fragment in line, line


# -- security: an embedded recipe never names a file to read --------------------------------------
class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_an_embedded_recipe_never_makes_i2i_open_a_file(tmp_path):
    """timm_unet's pretrained_path in a weights file's recipe: translate loaded (unpickled) that path.
    The weights file holds the trained weights: the path is dropped and never opened."""
    import i2i
    from i2i.registry import GENERATORS

    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps(Evil()))
    params = dict(GENERATORS.get("timm_unet", []).example)
    clean = weights_file(tmp_path / "clean.safetensors", tiny_recipe(
        model={"generator": {"name": "timm_unet", "params": params}, "discriminator": tiny_recipe()["model"]["discriminator"]},
        data={"load_size": 72, "crop_size": 64}))
    from safetensors import safe_open

    with safe_open(clean, "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    embedded = yaml.safe_load(metadata["recipe"])
    embedded["model"]["generator"]["params"]["pretrained_path"] = str(evil)
    hostile = tmp_path / "hostile.safetensors"
    hostile.write_bytes(weights_with_checksum(tensors, {**metadata, "recipe": yaml.safe_dump(embedded)}))

    opened = []
    real_load = torch.load
    torch.load = lambda file, *a, **k: opened.append(file) or real_load(file, *a, **k)
    try:
        translator = i2i.load(hostile, device="cpu")
    finally:
        torch.load = real_load
    assert opened == [] and translator.recipe.model.generator.params.pretrained_path is None
    out = translator(np.zeros((32, 32, 3), dtype=np.uint8))
    assert out.shape == (32, 32, 3)
    assert np.array_equal(out, i2i.load(clean, device="cpu")(np.zeros((32, 32, 3), dtype=np.uint8)))


# -- security: planted links in a run directory ----------------------------------------------------
@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / "run", symlinks=True))


def user_folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "users_pictures"
    folder.mkdir()
    for name in names:
        (folder / name).write_bytes(SECRET)
    return folder


def test_report_never_writes_or_deletes_through_a_plots_link(run_copy, tmp_path, monkeypatch, capsys):
    mine = user_folder(tmp_path, "losses.png", "metrics.png")
    shutil.rmtree(run_copy / "plots")
    (run_copy / "plots").symlink_to(mine)
    code, err = run_cli(["report", str(run_copy)], monkeypatch, capsys)
    assert_refused(code, err, "plots", "symbolic link")
    assert sorted(p.name for p in mine.iterdir()) == ["losses.png", "metrics.png"]
    assert all(p.read_bytes() == SECRET for p in mine.iterdir())


@pytest.mark.parametrize("folder", ["samples", "plots", "checkpoints"])
def test_resume_never_writes_through_a_planted_run_folder_link(folder, tmp_path, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(tiny_recipe(train={"max_steps": 2, "tensorboard": False}))
    run = tmp_path / "run"
    assert run_cli(["run", str(recipe), "--out", str(run), "--quiet"], monkeypatch, capsys)[0] == 0
    mine = user_folder(tmp_path, "step_00000004.png", "losses.png")
    moved = tmp_path / f"{folder}.moved"
    if (run / folder).exists():
        os.replace(run / folder, moved)
    (run / folder).symlink_to(mine)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()}
    code, err = run_cli(["run", str(recipe), "--out", str(run), "--resume", "--quiet", "--set", "train.max_steps=4"],
                        monkeypatch, capsys)
    assert_refused(code, err, str(run / folder), "symbolic link")
    assert sorted(p.name for p in mine.iterdir()) == ["losses.png", "step_00000004.png"]
    assert all(p.read_bytes() == SECRET for p in mine.iterdir())
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and not p.is_symlink()} == before


# -- security and hang: what a manifest may name ---------------------------------------------------
def hashed_files(monkeypatch) -> list[Path]:
    import i2i.engine.checkpoint as checkpoint

    hashed, real = [], checkpoint.sha256_file
    monkeypatch.setattr(checkpoint, "sha256_file", lambda path: hashed.append(Path(path)) or real(path))
    return hashed


@pytest.mark.parametrize("name", ["outside", "absolute", "link"])
def test_a_manifest_never_names_a_file_outside_its_checkpoint(name, run_copy, tmp_path, monkeypatch):
    from i2i.engine.checkpoint import latest_good_checkpoint, verify_checkpoint

    secret = tmp_path / "shadow"
    secret.write_bytes(SECRET)
    (checkpoint,) = (run_copy / "checkpoints").iterdir()
    entry = {"outside": "../../../shadow", "absolute": str(secret), "link": "shadow.link"}[name]
    if name == "link":
        (checkpoint / entry).symlink_to(secret)
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"][entry] = "0" * 64
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    hashed = hashed_files(monkeypatch)
    with pytest.raises(CheckpointError, match="no file name of the checkpoint folder|symbolic link"):
        verify_checkpoint(checkpoint)
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        latest_good_checkpoint(run_copy, lambda note: None)
    assert secret not in hashed and all(path.resolve().parent == checkpoint.resolve() for path in hashed)


def test_a_file_of_another_size_than_its_manifest_says_is_refused_before_hashing(run_copy, monkeypatch):
    from i2i.engine.checkpoint import verify_checkpoint

    (checkpoint,) = (run_copy / "checkpoints").iterdir()
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    assert manifest["sizes"]["state.pt"] == (checkpoint / "state.pt").stat().st_size  # a new checkpoint records them
    with open(checkpoint / "state.pt", "ab") as handle:  # a huge file, as far as the check knows
        handle.truncate(50 << 30)
    hashed = hashed_files(monkeypatch)
    with pytest.raises(CheckpointError, match=r"state.pt holds 53,687,091,200 bytes, its manifest.json says"):
        verify_checkpoint(checkpoint)
    assert checkpoint / "state.pt" not in hashed


def test_sigterm_stops_a_resume_that_is_still_verifying(run_copy, monkeypatch):
    """A stop used to wait for a training step; while a checkpoint is hashed there is none."""
    import i2i.engine.checkpoint as checkpoint
    from i2i.engine.faults import TrainingInterrupted
    from i2i.engine.trainer import Trainer

    def slow_hash(path):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.02)
        return "0" * 64

    trainer = Trainer(Recipe.from_file(run_copy / "recipe.yaml"), run_dir=run_copy)
    monkeypatch.setattr(checkpoint, "sha256_file", slow_hash)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    started = time.monotonic()
    with pytest.raises(TrainingInterrupted, match="stopped by SIGTERM before the first step") as stopped:
        trainer.fit(resume=True)
    assert time.monotonic() - started < 10 and stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


# -- loss: a CycleGAN run whose generator_ba is another kind ----------------------------------------
@pytest.fixture(scope="module")
def mixed_cyclegan(tmp_path_factory) -> Path:
    """A 2-step CycleGAN run: ResNet A -> B (multiple 4), U-Net B -> A (multiple 32)."""
    from conftest import write_fake_photos
    from i2i.engine.trainer import Trainer

    root = tmp_path_factory.mktemp("mixed")
    for side, seed in (("A", 1), ("B", 2)):
        write_fake_photos(root / "data" / f"train{side}", 3, (40, 40), seed=seed)
        write_fake_photos(root / "data" / f"test{side}", 2, (40, 40), seed=seed + 2)
    recipe = unpaired_recipe("cyclegan", root / "data", max_steps=2)
    recipe["model"]["generator_ba"] = {"name": "unet", "params": {"num_downs": 5, "ngf": 4}}
    torch.set_num_threads(1)
    Trainer(Recipe.from_dict(recipe), run_dir=root / "run").fit()
    return root / "run"


def test_a_cyclegan_generator_ba_of_another_kind_loads_both_ways(mixed_cyclegan):
    import i2i
    from i2i.engine.checkpoint import read_layout

    (checkpoint,) = (mixed_cyclegan / "checkpoints").iterdir()
    assert read_layout(checkpoint / "generator.safetensors")[0]["size_multiple"] == "4"
    assert read_layout(checkpoint / "generator_ba.safetensors")[0]["size_multiple"] == "32"
    image = np.random.default_rng(0).integers(0, 256, (37, 50, 3), dtype=np.uint8)
    for direction in ("AtoB", "BtoA"):
        translator = i2i.load(mixed_cyclegan, device="cpu", direction=direction)
        assert translator.metadata["direction"] == direction and translator(image).shape == image.shape


def test_a_generator_ba_written_with_the_a_to_b_multiple_still_loads(mixed_cyclegan, tmp_path):
    """Runs from before each generator kept its own multiple: their B -> A file holds the A -> B one's."""
    import i2i
    from safetensors import safe_open

    (checkpoint,) = (mixed_cyclegan / "checkpoints").iterdir()
    with safe_open(checkpoint / "generator_ba.safetensors", "pt") as handle:
        metadata, tensors = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    metadata.pop("i2i_weights_sha256")
    old = tmp_path / "generator_ba.safetensors"
    old.write_bytes(weights_with_checksum(tensors, {**metadata, "size_multiple": "4"}))
    translator = i2i.load(old, device="cpu")
    assert translator.metadata["direction"] == "BtoA" and translator.size_multiple == 32


def test_bench_quality_scores_a_generator_ba_file_as_b_to_a(mixed_cyclegan, tmp_path):
    from i2i.bench.quality import bench_quality
    from test_unpaired_results import MeanColour

    (checkpoint,) = (mixed_cyclegan / "checkpoints").iterdir()
    data = mixed_cyclegan.parent / "data"
    record = bench_quality(checkpoint / "generator_ba.safetensors", data, mode="eval", device="cpu", results=None,
                           extractor=MeanColour())
    asked = bench_quality(mixed_cyclegan, data, mode="eval", device="cpu", results=None, extractor=MeanColour(),
                          direction="BtoA")
    assert record["direction"] == "BtoA" and record["metrics"] == asked["metrics"]


@pytest.mark.parametrize("kind", ["folder", "link", "proc", "under a file"])
def test_bench_quality_checks_its_results_file_before_scoring(kind, tiny_run, fake_data_root, tmp_path, monkeypatch,
                                                              capsys):
    import i2i.bench.quality as quality

    results = {"folder": tmp_path, "link": tmp_path / "link.jsonl", "proc": Path("/proc/quality.jsonl"),
               "under a file": tmp_path / "file" / "quality.jsonl"}[kind]
    if kind == "link":
        results.symlink_to(tmp_path / "elsewhere.jsonl")
    if kind == "under a file":
        (tmp_path / "file").write_text("x")
    monkeypatch.setattr(quality, "evaluate", lambda *a, **k: pytest.fail("scored before the results file was checked"))
    code, err = run_cli(["bench", "quality", "--checkpoint", str(tiny_run), "--data", str(fake_data_root), "--mode",
                         "eval", "--device", "cpu", "--results", str(results)], monkeypatch, capsys)
    assert_refused(code, err, "--results", str(results))
    assert not (tmp_path / "elsewhere.jsonl").exists()


# -- wrong results: ONNX direction and metadata ---------------------------------------------------
@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory) -> Path:
    from i2i.export import export_generator

    return export_generator(tiny_run, "onnx", tmp_path_factory.mktemp("onnx") / "tiny.onnx").path


def test_an_onnx_export_is_never_run_in_another_direction(exported, monkeypatch, capsys, tmp_path):
    import i2i
    from i2i.export import ExportError

    with pytest.raises(ExportError, match="export of the A -> B generator; for --direction BtoA"):
        i2i.load(exported, device="cpu", direction="BtoA")
    image = tmp_path / "in"
    image.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image / "a.png")
    code, err = run_cli(["translate", "--checkpoint", str(exported), "--input", str(image), "--output",
                         str(tmp_path / "out"), "--direction", "BtoA", "--device", "cpu"], monkeypatch, capsys)
    assert_refused(code, err, "--direction BtoA")
    assert not (tmp_path / "out").exists()


def altered_onnx(source: Path, target: Path, **changes: str) -> Path:
    import onnx

    model = onnx.load(str(source))
    for prop in model.metadata_props:
        if prop.key in changes:
            prop.value = changes[prop.key]
    onnx.save(model, str(target))
    return target


@pytest.mark.parametrize("changes, problem", [
    ({"out_channels": "1"}, "metadata out_channels 1 does not match its graph, which has 3"),
    ({"in_channels": "1"}, "metadata in_channels 1 does not match its graph, which has 3"),
    ({"direction": "BtoA"}, "metadata direction 'BtoA' does not match the network it names"),
    ({"direction": "sideways"}, "metadata direction 'sideways' does not match"),
])
def test_onnx_metadata_is_checked_against_its_graph(changes, problem, exported, tmp_path):
    import i2i
    from i2i.export import ExportError

    with pytest.raises(ExportError, match=problem):
        i2i.load(altered_onnx(exported, tmp_path / "altered.onnx", **changes), device="cpu")


# -- wrong results: normalization on import --------------------------------------------------------
@pytest.mark.parametrize("generator", ["unet", "resnet"])
def test_import_refuses_weights_trained_with_another_normalization(generator, tmp_path):
    """An InstanceNorm reference file fits a norm-none generator tensor for tensor, and gives
    outputs off by about 1.0."""
    from i2i.engine.build import build_generator
    from i2i.reference_weights import WeightsError, import_reference_weights, layout_of

    params = {"unet": {"num_downs": 5, "ngf": 4}, "resnet": {"ngf": 4, "n_blocks": 2}}[generator]

    def recipe(norm: str) -> Recipe:
        return Recipe.from_dict(tiny_recipe(model={"generator": {"name": generator, "params": {**params, "norm": norm}},
                                                   "discriminator": tiny_recipe()["model"]["discriminator"]}))

    trained = build_generator(recipe("instance"), 3, 3)
    reference_name = layout_of(trained)[1]
    file = tmp_path / "latest_net_G.pth"
    torch.save({reference_name(key): value for key, value in trained.state_dict().items()}, file)
    with pytest.raises(WeightsError, match="trained with instance normalization.*has norm none.*norm: instance"):
        import_reference_weights(file, recipe("none"), tmp_path / "none")
    assert not (tmp_path / "none").exists()
    import_reference_weights(file, recipe("instance"), tmp_path / "instance")  # the right recipe still imports


# -- tracebacks: tiny images, validate, a FIFO lock -----------------------------------------------
@pytest.mark.parametrize("size", [(1, 1), (4, 4), (3, 5), (2, 9)])
def test_a_resnet_generator_translates_images_of_a_few_pixels(size, tmp_path):
    import i2i

    recipe = unpaired_recipe("cyclegan", tmp_path)
    translator = i2i.load(weights_file(tmp_path / "g.safetensors", recipe), device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert translator(image).shape == image.shape
    assert translator.tile >= translator.floor == 8


@pytest.mark.parametrize("role, spec, problem", [
    ("generator_ba", {"name": "unet", "params": {"num_downs": 6, "ngf": 4}},
     "data.crop_size: 32 is not a multiple of 64, which generator_ba unet needs"),
    ("discriminator_a", {"name": "patchgan", "params": {"ndf": 4, "n_layers": 6}},
     "data.crop_size: 32 is too small at train.batch_size 1: discriminator_a patchgan fails"),
])
def test_validate_checks_a_second_direction_s_networks(role, spec, problem, tmp_path, write_recipe, monkeypatch,
                                                       capsys):
    recipe = unpaired_recipe("cyclegan", tmp_path)
    recipe["model"][role] = spec
    code, err = run_cli(["validate", str(write_recipe(recipe))], monkeypatch, capsys)
    assert code == 2 and problem in err and "Traceback" not in err, err


def test_a_fifo_planted_at_the_run_lock_is_one_line(tmp_path, write_recipe, monkeypatch, capsys):
    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / ".i2i-run.lock")
    code, err = run_cli(["run", str(write_recipe(tiny_recipe())), "--out", str(run)], monkeypatch, capsys)
    assert_refused(code, err, ".i2i-run.lock", "not a regular file")
    assert sorted(p.name for p in run.iterdir()) == [".i2i-run.lock"]


# -- minor ------------------------------------------------------------------------------------------
def test_nproc_0_is_one_line_and_makes_no_run_folder(tmp_path, write_recipe, monkeypatch, capsys):
    code, err = run_cli(["run", str(write_recipe(tiny_recipe())), "--out", str(tmp_path / "run"), "--nproc", "0"],
                        monkeypatch, capsys)
    assert_refused(code, err, "--nproc 0")
    assert not (tmp_path / "run").exists()


def test_an_empty_i2i_cache_keeps_the_inception_cache_out_of_the_current_folder(tmp_path, monkeypatch):
    import i2i.bench.inception as inception

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("I2I_CACHE", "")
    written = []
    monkeypatch.setattr(inception, "load_torchscript", torch.nn.Module)
    monkeypatch.setattr(inception, "convert", lambda state: {})
    monkeypatch.setattr(inception, "write_file", lambda path, data: written.append(Path(path)))
    inception.converted_weights()
    assert written and all(path.is_relative_to(tmp_path / "home" / ".cache" / "i2i") for path in written), written


def test_a_zip_bomb_placed_by_hand_is_refused_before_anything_is_extracted(tmp_path):
    from i2i.data.download import DownloadError, Entry, extract

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("bomb/trainA/a.png", bytes(80 << 20))
    entry = Entry("bomb", "a bomb", {"trainA": None}, url="http://127.0.0.1/bomb.zip")
    with pytest.raises(DownloadError, match=r"expand from [\d,]+ to 83,886,080 bytes"):
        extract(archive, tmp_path, entry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]


def test_quiet_prints_no_engine_probe_lines(tmp_path, write_recipe, monkeypatch, capsys):
    import i2i.engine.trainer as trainer_module
    from i2i.run import train

    real = trainer_module.choose_engine

    def choose_noting(recipe, device, channels, step, planned, log_line, warn):
        log_line("engine probe: fused_adam runs 1.10x the speed of no fused_adam")
        return real(recipe, device, channels, step, planned, log_line, warn)

    monkeypatch.setattr(trainer_module, "choose_engine", choose_noting)
    train(write_recipe(tiny_recipe(train={"max_steps": 1, "tensorboard": False})), quiet=True,
          output_dir=str(tmp_path / "run"))
    assert "engine probe" not in capsys.readouterr().out


def test_cycle_and_nce_terms_are_losses_in_the_progress_line_and_the_report(run_copy, monkeypatch):
    import i2i.report as report
    from i2i.run import format_losses

    record = {"step": 1, "epoch": 0, "lr": 2e-4, "steps_per_s": 3.0, "G_GAN": 1.0, "cycle_a": 2.0, "idt_b": 3.0,
              "NCE": 4.0, "D_real": 5.0}
    assert format_losses(record) == "G_GAN 1.000  cycle_a 2.000  idt_b 3.000  NCE 4.000  D_real 5.000"
    (run_copy / "log.jsonl").write_text(json.dumps(record) + "\n" + json.dumps({"step": 1, "eval_fid": 9.0}) + "\n")
    plotted = {}
    monkeypatch.setattr(report, "plot", lambda curves, path, title: plotted.setdefault(title, sorted(curves)) and path)
    report.build_report(run_copy)
    assert plotted == {"losses": ["D_real", "G_GAN", "NCE", "cycle_a", "idt_b"], "metrics": ["eval_fid"]}


def test_a_folder_named_like_a_shipped_recipe_says_what_it_hides(tmp_path, monkeypatch, capsys):
    from i2i.recipe import shipped_recipes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "pix2pix_maps").mkdir()  # a run directory or a data set of that name: a path wins over a name
    code, err = run_cli(["validate", "pix2pix_maps"], monkeypatch, capsys)
    assert code == 2 and f"it hides the recipe of that name that comes with i2i: pass {shipped_recipes()}" in err
    assert Recipe.from_file(shipped_recipes() / "pix2pix_maps.yaml").name == "pix2pix_maps"
    (tmp_path / "mine").mkdir()
    with pytest.raises(I2IError, match="mine:\n  - is a folder, not a recipe file$"):
        Recipe.from_file("mine")


def test_sigterm_to_the_demo_leaves_no_temporary_folder(tiny_run, tmp_path, monkeypatch):
    """As `kill` or a service manager stops it: through the clean-up of every block, exit 143."""
    import tempfile

    from i2i.demo import serve

    pytest.importorskip("gradio")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gradio_folder, seen = os.environ.get("GRADIO_TEMP_DIR"), []

    def stop(url: str) -> None:
        seen.extend(p.name for p in tmp_path.iterdir())
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()

    with pytest.raises(SystemExit) as stopped:
        serve(str(tiny_run), device="cpu", on_ready=stop)
    assert stopped.value.code == 143 and [name for name in seen if name.startswith("i2i-demo-")]
    assert list(tmp_path.iterdir()) == [] and os.environ.get("GRADIO_TEMP_DIR") == gradio_folder
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
