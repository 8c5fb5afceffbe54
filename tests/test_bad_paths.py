"""Run directories that must not be written to: one clear line from ``i2i run``, never a traceback."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from i2i.cli import main

from conftest import ROOT, tiny_recipe

HOSTNAME = Path("/etc/hostname")
RUN_OUTPUTS = {"checkpoints", "samples", "plots", "tensorboard", "recipe.yaml", "log.jsonl", "environment.json",
               "report.html", ".i2i-run.lock"}


def bad_run_dirs(tmp_path: Path) -> dict[str, list[str]]:
    """Arguments of ``i2i run`` that point the run somewhere it must not go."""
    return {
        "the file system root": ["--out", "/"],
        "the home directory": ["--out", str(tmp_path / "home")],
        "the home directory, as output_dir": ["--set", f"output_dir={tmp_path / 'home'}"],
        "an existing file": ["--out", str(tmp_path / "file")],
        "a folder under a file": ["--out", str(tmp_path / "file" / "run")],
        "a folder under /etc/hostname": ["--out", str(HOSTNAME / "run")],
        "a folder in /proc": ["--out", "/proc/x"],
        "a folder in /sys": ["--out", "/sys/x"],
    }


CASES = list(bad_run_dirs(Path("/tmp")))  # the names; each test makes the paths under its own tmp_path


@pytest.fixture
def places(tmp_path, monkeypatch, write_recipe):
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("keep me")
    monkeypatch.setenv("HOME", str(home))
    return write_recipe(tiny_recipe(train={"max_steps": 1})), bad_run_dirs(tmp_path)


def run_cli(arguments: list[str], monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["i2i", *arguments])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES)
def test_a_bad_run_directory_is_one_clear_line(case, places, monkeypatch, capsys, tmp_path):
    recipe, cases = places
    if "hostname" in case and not HOSTNAME.is_file():
        pytest.skip("/etc/hostname is not a file here")
    before = set(os.listdir("/"))
    try:
        code, err = run_cli(["run", str(recipe), "--quiet", *cases[case]], monkeypatch, capsys)
    finally:
        written_to_root = set(os.listdir("/")) - before
        for name in written_to_root & RUN_OUTPUTS:  # what a run into / wrote when it was not refused
            target = Path("/") / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()
    assert not written_to_root
    assert code not in (0, None)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run directory ") and "Traceback" not in err, err
    assert "choose another --out" in lines[0]
    assert not set(os.listdir(tmp_path / "home")) & RUN_OUTPUTS  # (libraries may add their .cache)
    assert (tmp_path / "home" / "notes.txt").read_text() == (tmp_path / "file").read_text() == "keep me"


def test_the_installed_command_prints_the_same_single_line(places, tmp_path):
    recipe, cases = places
    result = subprocess.run([sys.executable, "-m", "i2i", "run", str(recipe), *cases["a folder under a file"]],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "HOME": str(tmp_path / "home")})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: run directory {tmp_path / 'file' / 'run'} cannot be made: {tmp_path / 'file'} is a file; "
        f"choose another --out (or output_dir)"]
