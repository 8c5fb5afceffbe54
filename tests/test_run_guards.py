"""``i2i run`` guards its run directory: one run at a time, no silent reuse, resume checks the recipe."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from i2i.cli import main

from conftest import ROOT, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(arguments: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``i2i ARGUMENTS`` through the installed entry point, in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["i2i", *map(str, arguments)])
    try:
        main()
        code = 0
    except SystemExit as exited:
        code = exited.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def finished(tmp_path, write_recipe, monkeypatch, capsys) -> tuple[Path, Path]:
    """(recipe, run dir) of a finished 2-step run with a checkpoint per step."""
    recipe = write_recipe(tiny_recipe(train={"max_steps": 2, "checkpoint_every": 1, "tensorboard": False}))
    run_dir = tmp_path / "run"
    assert run_cli(["run", recipe, "--out", run_dir, "--quiet"], monkeypatch, capsys)[0] == 0
    return recipe, run_dir


def test_a_finished_run_is_not_overwritten_without_resume(finished, monkeypatch, capsys):
    recipe, run_dir = finished
    before = hashes(run_dir)
    code, _, err = run_cli(["run", recipe, "--out", run_dir, "--quiet"], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"error: {run_dir} already holds a run; continue it with --resume, choose another --out, "
                           f"or pass --overwrite to move the old run aside")
    assert hashes(run_dir) == before


def test_with_several_processes_the_refusal_comes_once_before_they_start(finished, monkeypatch, capsys):
    recipe, run_dir = finished
    launched = []
    monkeypatch.setattr("i2i.engine.distributed.launch", lambda *args: launched.append(args))
    code, _, err = run_cli(["run", recipe, "--out", run_dir, "--nproc", "2"], monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already holds a run" in err
    assert launched == []


def test_overwrite_moves_the_old_run_aside(finished, monkeypatch, capsys, tmp_path):
    recipe, run_dir = finished
    before = hashes(run_dir)
    code, out, _ = run_cli(["run", recipe, "--out", run_dir, "--quiet", "--overwrite", "--set", "train.max_steps=1"],
                           monkeypatch, capsys)
    assert code == 0
    (aside,) = tmp_path.glob("run.old-*")
    assert f"moved the previous run in {run_dir} aside to {aside}" in out
    assert hashes(aside) == before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000001"]
    assert steps_logged(run_dir) == [1]


def test_resume_with_a_changed_lr_needs_allow_changes(finished, monkeypatch, capsys):
    recipe, run_dir = finished
    saved = (run_dir / "recipe.yaml").read_text()
    changed = ["run", recipe, "--out", run_dir, "--quiet", "--resume", "--set", "train.lr=1e-4",
               "--set", "train.max_steps=3"]
    code, _, err = run_cli(changed, monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.lr 0.0002 -> 0.0001" in err and "train.max_steps 2 -> 3" in err and "--allow-changes" in err
    assert (run_dir / "recipe.yaml").read_text() == saved
    code, out, _ = run_cli([*changed, "--allow-changes"], monkeypatch, capsys)
    assert code == 0 and "resuming with a changed recipe: train.lr 0.0002 -> 0.0001, train.max_steps 2 -> 3" in out
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text())["train"]["lr"] == 1e-4


def test_resume_with_a_longer_schedule_only_notes_it(finished, monkeypatch, capsys):
    recipe, run_dir = finished
    code, out, _ = run_cli(["run", recipe, "--out", run_dir, "--quiet", "--resume", "--set", "train.max_steps=3"],
                           monkeypatch, capsys)
    assert code == 0 and "resuming with a changed recipe: train.max_steps 2 -> 3" in out
    assert steps_logged(run_dir) == [1, 2, 3]


def test_resume_with_a_crop_the_generator_cannot_take_is_refused_before_training(finished, monkeypatch, capsys):
    recipe, run_dir = finished
    before = hashes(run_dir)
    code, _, err = run_cli(["run", recipe, "--out", run_dir, "--resume", "--allow-changes",
                            "--set", "data.crop_size=20"], monkeypatch, capsys)
    assert code == 2 and "data.crop_size: 20 is not a multiple of 32" in err and "Traceback" not in err
    assert hashes(run_dir) == before


def test_resume_leaves_one_log_record_per_step(finished, monkeypatch, capsys):
    recipe, run_dir = finished
    shutil.rmtree(run_dir / "checkpoints" / "step_00000002")  # as if killed after logging step 2, before saving it
    assert run_cli(["run", recipe, "--out", run_dir, "--quiet", "--resume"], monkeypatch, capsys)[0] == 0
    assert steps_logged(run_dir) == [1, 2]


@pytest.mark.parametrize("overrides", [["data.load_size=140", "data.crop_size=128"], ["data.load_size=100000"]])
def test_validate_refuses_sizes_the_flagship_cannot_train_at(overrides, monkeypatch, capsys):
    arguments = ["validate", ROOT / "recipes" / "pix2pix_maps.yaml"] + [a for o in overrides for a in ("--set", o)]
    code, out, err = run_cli(arguments, monkeypatch, capsys)
    assert code == 2 and "Traceback" not in err
    assert ("not a multiple of 256" if "data.crop_size=128" in overrides else "27.9 GiB in 8 bits") in err


def test_two_runs_on_one_directory_one_is_refused_naming_the_other(tmp_path, write_recipe):
    recipe = write_recipe(tiny_recipe(train={"epochs": 1000, "checkpoint_every": 1, "log_every": 1,
                                             "tensorboard": False}))
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "i2i", "run", str(recipe), "--out", str(run_dir), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first, second = (subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                      env=env) for _ in range(2))
    deadline = time.monotonic() + 180
    while first.poll() is None and second.poll() is None:
        assert time.monotonic() < deadline, "neither run was refused"
        time.sleep(0.1)
    refused, running = (first, second) if first.poll() is not None else (second, first)
    _, err = refused.communicate()
    assert refused.returncode == 2
    assert err.strip().splitlines() == [
        f"error: run directory {run_dir} is in use by another i2i run (pid {running.pid} on {os.uname().nodename}, "
        f"started {json.loads((run_dir / '.i2i-run.lock').read_text())['started']}); wait for it to end, "
        f"or choose another --out"]
    while not (run_dir / "log.jsonl").is_file() or len(steps_logged(run_dir)) < 3:
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.1)
    running.send_signal(signal.SIGINT)
    running.communicate(timeout=60)
    assert running.returncode == 130
    steps = steps_logged(run_dir)
    assert steps == list(range(1, len(steps) + 1))  # one record per step: one writer
    assert not (run_dir / ".i2i-run.lock").exists()
