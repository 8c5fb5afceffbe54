"""The console a user sees: `i2i run` (plain, quiet, terminal), `i2i report`, `i2i translate`, errors."""

from __future__ import annotations

import io
import re
import sys

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from i2i.cli import app, main
from i2i.run import train_from_recipe

from conftest import tiny_recipe

runner = CliRunner()


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe(train={"max_steps": 3, "log_every": 1, "sample_every": 3})))
    return path


def test_run_off_a_terminal_prints_a_summary_plain_lines_and_where_things_are(recipe_file, tmp_path):
    result = runner.invoke(app, ["run", str(recipe_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    out = result.output
    for expected in ("generator     unet", "discriminator patchgan", "8 training pairs", "3 steps", "tensorboard on"):
        assert expected in out
    steps = re.findall(r"^step (\d)/3  epoch 1  [\d.]+ steps/s  elapsed \S+  eta \S+  G_GAN [\d.]+", out, re.M)
    assert steps == ["1", "2", "3"]
    assert f"report        {tmp_path / 'run' / 'report.html'}" in out
    assert "tensorboard --logdir" in out and "\x1b[" not in out, "no escape codes off a terminal"


def test_quiet_prints_only_the_result_and_no_tensorboard_turns_it_off(recipe_file, tmp_path):
    result = runner.invoke(app, ["run", str(recipe_file), "--out", str(tmp_path / "run"), "--quiet", "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("done: 3 steps") and lines[1].endswith("report.html")
    assert (tmp_path / "run" / "report.html").is_file()
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_recipe_can_turn_tensorboard_off(recipe_file, tmp_path):
    result = runner.invoke(app, ["run", str(recipe_file), "--out", str(tmp_path / "run"), "-q",
                                 "--set", "train.tensorboard=false", "--set", "train.max_steps=1"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_a_terminal_gets_progress_bars_with_rate_eta_and_losses(recipe_file, tmp_path):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    train_from_recipe(recipe_file, ["train.tensorboard=false"], tmp_path / "run", False, console)
    text = re.sub(r"\x1b\[[0-9;]*m", "", screen.getvalue())
    assert "epoch 1/1" in text and "total" in text and "3/3" in text
    assert re.search(r"[\d.]+ steps/s", text) and "eta" in text and re.search(r"G_l1 [\d.]+", text)
    assert "done: 3 steps" in text


def test_report_command_rebuilds(tiny_run):
    before = (tiny_run / "report.html").stat().st_mtime_ns
    result = runner.invoke(app, ["report", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output and (tiny_run / "report.html").stat().st_mtime_ns > before


def test_translate_command(tiny_run, tmp_path):
    from PIL import Image

    Image.new("RGB", (50, 30), "teal").save(tmp_path / "x.png")
    result = runner.invoke(app, ["translate", "--checkpoint", str(tiny_run), "--input", str(tmp_path / "x.png"),
                                 "--output", str(tmp_path / "out"), "--mode", "train", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "wrote 1 image(s)" in result.output
    assert Image.open(tmp_path / "out" / "x.png").size == (50, 30)


def test_user_errors_are_one_line_without_traceback(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(sys, "argv", ["i2i", "report", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "error:" in err and "not a run directory" in err and "Traceback" not in err
