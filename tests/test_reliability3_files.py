"""Issue 23, files: writes never follow a planted link, never land on the run they come from,
`--overwrite` moves only a run's own files, and a full disk is one line wherever a run writes."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_recipe
from i2i.cli import main
from test_download import server  # noqa: F401  (fixture: a loopback file server)
from test_hub import OWNER_REPO, TOKEN, HubHandler, hub  # noqa: F401  (fixture: a loopback Hub)

SECRET = b"the user's file, which no i2i command may change"


def plant_link(link: Path, target: Path) -> Path:
    """A link where i2i used to put a temporary file, to a file outside i2i's output."""
    target.write_bytes(SECRET)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return target


def run_cli(arguments: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``i2i ARGUMENTS`` as the console script runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["i2i", *arguments])
    try:
        main()
    except SystemExit as exited:
        return exited.code or 0, capsys.readouterr().err
    return 0, capsys.readouterr().err


def one_line(text: str) -> str:
    assert "Traceback" not in text, text
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder


# -- writes that follow a planted link ---------------------------------------------------------
def test_translate_never_writes_through_a_link_planted_at_its_temporary_name(tiny_run, image_folder, tmp_path):
    from i2i.translate import translate_paths

    out = tmp_path / "out"
    secret = plant_link(out / ".a.png.tmp", tmp_path / "secret.txt")
    translate_paths(tiny_run, image_folder, out, device="cpu")
    assert secret.read_bytes() == SECRET
    assert Image.open(out / "a.png").size == (32, 32)


def test_report_never_writes_through_a_link_planted_at_its_temporary_name(tiny_run, tmp_path):
    from i2i.report import build_report

    run = shutil.copytree(tiny_run, tmp_path / "run")
    secret = plant_link(run / "report.html.part", tmp_path / "secret.txt")
    build_report(run)
    assert secret.read_bytes() == SECRET
    assert "<html" in (run / "report.html").read_text()


def test_a_link_at_the_target_itself_is_replaced_never_followed(tmp_path):
    """A sample grid, a plot or a report over a link put at its own name: the link goes, its target stays."""
    import torch

    from i2i.visual import save_grid

    grid = tmp_path / "samples" / "step_00000002.png"
    secret = plant_link(grid, tmp_path / "secret.txt")
    save_grid([torch.zeros(1, 3, 8, 8)], grid)
    assert secret.read_bytes() == SECRET
    assert not grid.is_symlink() and Image.open(grid).size == (8, 8)


def test_import_weights_never_writes_through_a_link_planted_at_its_temporary_name(tmp_path):
    from test_reference_weights import ReferenceUNet, save, unet_recipe

    from i2i.reference_weights import import_reference_weights

    file = save(ReferenceUNet(3, 3, 6, 8).state_dict(), tmp_path / "g.pth")
    out = tmp_path / "imported"
    secret = plant_link(out / ".generator.safetensors.tmp", tmp_path / "secret.txt")
    manifest_secret = plant_link(out / ".manifest.json.tmp", tmp_path / "secret2.txt")
    import_reference_weights(file, unet_recipe(6, 8), out)
    assert secret.read_bytes() == SECRET and manifest_secret.read_bytes() == SECRET
    assert (out / "generator.safetensors").stat().st_size > 1000


def test_the_engine_cache_never_writes_through_a_link_planted_at_its_temporary_name(tmp_path):
    from i2i.engine.autotune import write_cached

    path = tmp_path / "engine" / "cpu.json"
    secret = plant_link(path.with_name(f".{path.name}.{os.getpid()}.tmp"), tmp_path / "secret.txt")
    write_cached(path, {"key": "k"}, note=pytest.fail)
    assert secret.read_bytes() == SECRET and json.loads(path.read_text()) == {"key": "k"}


def test_a_log_line_never_follows_a_link_and_the_run_says_so_in_one_line(tmp_path, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1, "tensorboard": False}))
    run = tmp_path / "run"
    secret = tmp_path / "secret.txt"
    secret.write_bytes(SECRET)
    from i2i.engine import trainer as trainer_module

    real_start = trainer_module.Trainer.start_run_dir

    def start_then_plant(self):  # once the run holds its folder: a log.jsonl before makes it a run
        real_start(self)
        (self.run_dir / "log.jsonl").symlink_to(secret)

    monkeypatch.setattr(trainer_module.Trainer, "start_run_dir", start_then_plant)
    code, err = run_cli(["run", str(recipe), "--out", str(run), "--quiet"], monkeypatch, capsys)
    assert code == 2
    assert f"cannot write {run.resolve() / 'log.jsonl'}: it is a symbolic link, and i2i does not write through links" in one_line(err)
    assert secret.read_bytes() == SECRET


# -- a full disk -------------------------------------------------------------------------------
class FullDisk:
    """``os`` as ``i2i.safe_files`` sees it, where every file opened for writing whose path matches
    ``pattern`` writes into /dev/full: the kernel's own "No space left on device"."""

    def __init__(self, pattern: str):
        self.pattern = pattern

    def __getattr__(self, name):
        return getattr(os, name)

    def fdopen(self, fd, *args, **kwargs):
        if fnmatch.fnmatch(os.readlink(f"/proc/self/fd/{fd}"), self.pattern):
            full = os.open("/dev/full", os.O_WRONLY)
            os.dup2(full, fd)
            os.close(full)
        return os.fdopen(fd, *args, **kwargs)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("what, pattern", [
    ("a sample grid", "*/samples/.step_00000002.png.*"),
    ("a log line", "*/log.jsonl"),
    ("report.html", "*/.report.html.*"),
])
def test_a_full_disk_while_a_run_writes_is_one_line_in_run_and_resume(what, pattern, tmp_path, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(tiny_recipe(train={"max_steps": 2, "sample_every": 2, "checkpoint_every": 1,
                                             "tensorboard": False}))
    from i2i import safe_files

    run = tmp_path / "run"
    monkeypatch.setattr(safe_files, "os", FullDisk(pattern))
    code, err = run_cli(["run", str(recipe), "--out", str(run), "--quiet"], monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and line.startswith("error: disk full: no space left to write ") and "--resume" in line, line
    assert "Free some space and continue with --resume" in line
    if what != "a log line":  # the first log line fails before the first checkpoint
        assert "step_00000001 is intact" in line

    code, err = run_cli(["run", str(recipe), "--out", str(run), "--quiet", "--resume"], monkeypatch, capsys)
    assert code == 2 and "disk full" in one_line(err)
    monkeypatch.setattr(safe_files, "os", os)
    code, err = run_cli(["run", str(recipe), "--out", str(run), "--quiet", "--resume"], monkeypatch, capsys)
    assert code == 0, err
    assert (run / "samples" / "step_00000002.png").is_file() and (run / "report.html").is_file()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_in_i2i_report_is_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    from i2i import safe_files

    run = shutil.copytree(tiny_run, tmp_path / "run")
    before = (run / "report.html").read_bytes()
    monkeypatch.setattr(safe_files, "os", FullDisk("*/.report.html.*"))
    code, err = run_cli(["report", str(run)], monkeypatch, capsys)
    line = one_line(err)
    assert code == 2 and line.startswith(f"error: disk full: no space left to write {run / 'report.html'}"), line
    assert (run / "report.html").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


# -- writing over the run itself ---------------------------------------------------------------
@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return shutil.copytree(tiny_run, tmp_path / "run")


def test_export_refuses_an_output_inside_the_run_or_a_checkpoint_and_changes_nothing(run_copy, monkeypatch, capsys):
    from i2i.engine.checkpoint import latest_checkpoint, verify_checkpoint

    newest = latest_checkpoint(run_copy)
    for output in (newest / "generator.safetensors", run_copy / "recipe.yaml", run_copy / "samples" / "x.onnx"):
        before = output.read_bytes() if output.exists() else None
        code, err = run_cli(["export", "--checkpoint", str(run_copy), "--output", str(output), "--force"], monkeypatch, capsys)
        assert code == 2 and "write it elsewhere" in one_line(err), err
        assert (output.read_bytes() if output.exists() else None) == before
    verify_checkpoint(newest)


def test_export_replaces_only_a_previous_export_and_only_with_force(run_copy, tmp_path, monkeypatch, capsys):
    image = tmp_path / "picture.png"
    Image.new("RGB", (4, 4)).save(image)
    code, err = run_cli(["export", "--checkpoint", str(run_copy), "--output", str(image), "--force"], monkeypatch, capsys)
    assert code == 2 and "exists and is not an i2i export" in one_line(err)
    assert Image.open(image).size == (4, 4)

    output = tmp_path / "g.onnx"
    assert run_cli(["export", "--checkpoint", str(run_copy), "--output", str(output)], monkeypatch, capsys)[0] == 0
    first = output.read_bytes()
    code, err = run_cli(["export", "--checkpoint", str(run_copy), "--output", str(output)], monkeypatch, capsys)
    assert code == 2 and "holds a previous export; pass --force" in one_line(err)
    assert run_cli(["export", "--checkpoint", str(run_copy), "--output", str(output), "--force"], monkeypatch, capsys)[0] == 0
    assert output.read_bytes() == first  # the same generator exports to the same bytes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_import_weights_refuses_an_output_in_a_run(run_copy, tmp_path, monkeypatch, capsys):
    from test_reference_weights import ReferenceUNet, save

    file = save(ReferenceUNet(3, 3, 5, 8).state_dict(), tmp_path / "g.pth")
    for output in (run_copy, run_copy / "imported", run_copy / "checkpoints" / "step_00000004"):
        code, err = run_cli(["import-weights", str(file), "--recipe", "pix2pix_maps", "--output", str(output)],
                            monkeypatch, capsys)
        assert code == 2 and "choose " in one_line(err), err
    assert not (run_copy / "generator.safetensors").exists() and not (run_copy / "imported").exists()


# -- --overwrite and --out ---------------------------------------------------------------------
def test_overwrite_moves_only_what_the_run_wrote(tmp_path, write_recipe, monkeypatch, capsys):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "pairs.txt").write_text("the user's data")
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1}), "my.yaml")
    shutil.copy(recipe, project / "my.yaml")
    monkeypatch.chdir(project)
    assert run_cli(["run", "my.yaml", "--out", ".", "--quiet"], monkeypatch, capsys)[0] == 0
    code, err = run_cli(["run", "my.yaml", "--out", ".", "--quiet", "--overwrite"], monkeypatch, capsys)
    assert code == 0, err
    assert (project / "data" / "pairs.txt").read_text() == "the user's data" and (project / "my.yaml").is_file()
    (aside,) = tmp_path.glob("project.old-*")
    assert sorted(p.name for p in aside.iterdir()) == sorted(
        ["checkpoints", "samples", "plots", "tensorboard", "log.jsonl", "report.html", "recipe.yaml", "environment.json"])
    assert (project / "checkpoints").is_dir() and (project / "log.jsonl").is_file()


def test_an_empty_out_is_an_error(write_recipe, tmp_path, monkeypatch, capsys):
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1}))
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["run", str(recipe), "--out", "", "--quiet"], monkeypatch, capsys)
    assert code == 2 and "--out is empty" in one_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]  # the recipe alone, nothing written


# -- also --------------------------------------------------------------------------------------
def test_onnxruntime_on_a_checkpoint_leaves_no_temporary_folder(tiny_run, image_folder, tmp_path, monkeypatch):
    import tempfile

    from i2i.translate import translate_paths

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    translate_paths(tiny_run, image_folder, tmp_path / "out", device="cpu", backend="onnxruntime")
    assert (tmp_path / "out" / "a.png").is_file()
    assert list(scratch.iterdir()) == []


def test_models_list_prints_the_url_in_use(monkeypatch):
    from typer.testing import CliRunner

    from i2i.cli import app

    monkeypatch.setenv("I2I_MODELS_URL", "http://mirror.example/pix2pix/")
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0 and "from http://mirror.example/pix2pix (set by I2I_MODELS_URL)" in result.output
    assert "efrosgans" not in result.output
    monkeypatch.delenv("I2I_MODELS_URL")
    assert "from http://efrosgans.eecs.berkeley.edu/pix2pix/models-pytorch (I2I_MODELS_URL overrides)" in (
        CliRunner().invoke(app, ["models", "list"]).output)


def test_tensorboard_shows_one_value_per_step_after_a_resume(tmp_path, write_recipe, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = write_recipe(tiny_recipe(train={"max_steps": 4, "checkpoint_every": 2, "sample_every": 2}))
    run = tmp_path / "run"
    assert run_cli(["run", str(recipe), "--out", str(run), "--quiet"], monkeypatch, capsys)[0] == 0
    shutil.rmtree(run / "checkpoints" / "step_00000004")  # as if killed after step 4, before its checkpoint
    assert run_cli(["run", str(recipe), "--out", str(run), "--quiet", "--resume"], monkeypatch, capsys)[0] == 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("loss/G_l1")] == [1, 2, 3, 4]
    assert [event.step for event in events.Images("samples/input|generated|target")] == [2, 4]


def test_the_run_lock_is_never_opened_through_a_link(tmp_path, write_recipe, monkeypatch, capsys):
    recipe = write_recipe(tiny_recipe(train={"max_steps": 1}))
    run = tmp_path / "run"
    secret = plant_link(run / ".i2i-run.lock", tmp_path / "secret.txt")
    code, err = run_cli(["run", str(recipe), "--out", str(run), "--quiet"], monkeypatch, capsys)
    assert code == 2 and "is a symbolic link; remove it" in one_line(err)
    assert secret.read_bytes() == SECRET


def test_a_download_never_appends_through_a_link_planted_at_its_part_file(server, tmp_path):
    from i2i.data.download import fetch_file

    body = bytes(range(256)) * 40
    dest = tmp_path / "model.pth"
    secret = plant_link(tmp_path / "model.pth.part", tmp_path / "secret.txt")
    fetch_file(server.publish("model.pth", body), dest, "model.pth", "download it by hand", show_progress=False)
    assert secret.read_bytes() == SECRET and dest.read_bytes() == body


# -- the Hub -----------------------------------------------------------------------------------


def test_push_refuses_a_sample_grid_that_links_outside_the_run(run_copy, hub, tmp_path):
    from i2i.hub import HubError, push_to_hub

    grid = run_copy / "samples" / "step_00000004.png"
    grid.unlink()
    plant_link(grid, tmp_path / "secret.txt")
    with pytest.raises(HubError, match=r"refusing to upload .*step_00000004.png: it leads outside the run"):
        push_to_hub(run_copy, OWNER_REPO, token=TOKEN, quality_results=None)
    assert not [content for files in hub.repos.values() for branch in files.values() for content in branch.values()
                if SECRET in content]


def test_push_to_a_new_branch_of_an_existing_repo(tiny_run, hub):
    from i2i.hub import push_to_hub

    push_to_hub(tiny_run, OWNER_REPO, token=TOKEN, quality_results=None)
    pushed = push_to_hub(tiny_run, OWNER_REPO, revision="v2", token=TOKEN, quality_results=None)
    assert pushed.url.endswith("/tree/v2") and "generator.safetensors" in hub.repos[OWNER_REPO]["v2"]


@pytest.mark.parametrize("revision", ["../../etc", "v1/../../x", "v 1", "v1;rm", "~v1"])
def test_a_revision_is_checked_before_anything_is_asked_of_the_hub(revision, tiny_run, hub):
    from i2i.hub import HubError, download_from_hub, push_to_hub

    expected = re.escape(f"revision {revision!r} is not a branch, tag or commit name")
    with pytest.raises(HubError, match=expected):
        download_from_hub(f"hf://{OWNER_REPO}@{revision}")
    with pytest.raises(HubError, match=expected):
        push_to_hub(tiny_run, OWNER_REPO, revision=revision, token=TOKEN, quality_results=None)
    assert hub.repos == {}


class HostileETag(HubHandler):
    """A Hub (or mirror) whose ETag leads out of the download library's cache."""

    def reply(self, status, body=b"", headers=None):
        if headers and "ETag" in headers:
            headers = {**headers, "ETag": '"../../../escaped"'}
        super().reply(status, body, headers)


def test_an_etag_leading_out_of_the_cache_is_refused_before_anything_is_written(tiny_run, hub, tmp_path):
    from i2i.hub import HubError, download_from_hub, push_to_hub

    push_to_hub(tiny_run, OWNER_REPO, token=TOKEN, quality_results=None)
    hub.RequestHandlerClass = HostileETag
    with pytest.raises(HubError, match=r"hf://someone/tiny-maps: the Hub sent the ETag '\.\./\.\./\.\./escaped'"):
        download_from_hub(f"hf://{OWNER_REPO}")
    assert not [path for path in tmp_path.rglob("escaped*")]
