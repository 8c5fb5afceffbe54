"""Run-directory guards (i2i/run_dir.py): the lock between real processes, reuse, resume checks."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from i2i.engine.run_log import truncate_log
from i2i.run_dir import (
    LOCK_NAME,
    RunDirError,
    RunLock,
    check_resume_changes,
    check_run_dir_path,
    claim_run_dir,
    recipe_changes,
)

from conftest import ROOT

HOLD_LOCK = textwrap.dedent("""
    import sys
    from i2i.run_dir import RunLock
    RunLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()  # hold it until the test closes stdin or kills us
""")


@pytest.fixture
def holder(tmp_path):
    """A separate process holding the lock of tmp_path/run until the test ends."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout.readline().strip() == "locked"
    yield process, run_dir
    if process.poll() is None:
        process.kill()
    process.wait()


def test_a_second_process_is_refused_naming_the_holders_pid(holder):
    process, run_dir = holder
    with pytest.raises(RunDirError, match=rf"{run_dir} is in use by another i2i run \(pid {process.pid} on "):
        RunLock(run_dir).acquire()


def test_a_lock_held_by_a_killed_process_is_taken_over_with_a_note(holder):
    process, run_dir = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (run_dir / LOCK_NAME).exists()  # nobody cleaned up after kill -9
    notes = []
    lock = RunLock(run_dir, notes.append)
    lock.acquire()
    assert len(notes) == 1 and f"pid {process.pid}" in notes[0] and "taking over" in notes[0]
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_a_released_lock_leaves_no_file_and_no_note(tmp_path):
    notes = []
    with RunLock(tmp_path, notes.append):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
    with RunLock(tmp_path, notes.append):
        pass
    assert notes == []


def test_a_lock_is_released_when_its_process_exits_on_an_error(tmp_path):
    crash = "import sys; from i2i.run_dir import RunLock; RunLock(sys.argv[1]).acquire(); raise SystemExit(3)"
    assert subprocess.run([sys.executable, "-c", crash, str(tmp_path)], cwd=ROOT).returncode == 3
    with RunLock(tmp_path):  # the OS dropped the lock with the process
        pass


# ------------------------------------------------------------------- reuse
def finished_run(run_dir: Path) -> Path:
    (run_dir / "checkpoints" / "step_00000004").mkdir(parents=True)
    (run_dir / "log.jsonl").write_text('{"step": 4}\n')
    (run_dir / "recipe.yaml").write_text("name: old\n")
    return run_dir


def test_a_directory_holding_a_run_is_not_reused_without_resume(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    with pytest.raises(RunDirError, match="already holds a run; continue it with --resume, choose another --out, "
                                          "or pass --overwrite"):
        with claim_run_dir(run_dir):
            pass
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoints", "log.jsonl", "recipe.yaml"]
    with claim_run_dir(run_dir, resume=True):
        assert (run_dir / LOCK_NAME).exists()


@pytest.mark.parametrize("marker", ["checkpoints", "log.jsonl", "recipe.yaml"])
def test_each_trace_of_a_run_counts(tmp_path, marker):
    (tmp_path / marker).touch()
    with pytest.raises(RunDirError, match="already holds a run"):
        with claim_run_dir(tmp_path):
            pass


def test_overwrite_moves_the_old_run_aside_and_keeps_the_lock_in_place(tmp_path):
    run_dir = finished_run(tmp_path / "run")
    notes = []
    with claim_run_dir(run_dir, overwrite=True, note=notes.append):
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
        with pytest.raises(RunDirError, match="in use"):  # still guarded while the new run lives
            RunLock(run_dir).acquire()
    (aside,) = tmp_path.glob("run.old-*")
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "log.jsonl", "recipe.yaml"]
    assert f"aside to {aside}" in notes[0]


def test_resume_and_overwrite_together_are_refused(tmp_path):
    with pytest.raises(RunDirError, match="choose one"):
        with claim_run_dir(tmp_path, resume=True, overwrite=True):
            pass


@pytest.mark.parametrize("bad", ["root", "home", "file", "under_file", "proc", "sys"])
def test_dangerous_run_directories_are_refused(bad, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "file").write_text("x")
    path = {"root": Path("/"), "home": tmp_path / "home", "file": tmp_path / "file",
            "under_file": tmp_path / "file" / "run", "proc": Path("/proc/x"), "sys": Path("/sys/x")}[bad]
    with pytest.raises(RunDirError, match="choose another --out"):
        check_run_dir_path(path)


def test_an_ordinary_new_directory_is_fine(tmp_path):
    assert check_run_dir_path(tmp_path / "a" / "b") == (tmp_path / "a" / "b").resolve()


# ------------------------------------------------------------------ resume
RECIPE = {"name": "x", "model": {"generator": {"name": "unet", "params": {"ngf": 8}}},
          "losses": [{"name": "gan"}, {"name": "l1", "weight": 100.0}],
          "data": {"crop_size": 256, "num_workers": 2},
          "train": {"lr": 0.0002, "max_steps": 100, "log_every": 10, "device": "cpu"}, "output_dir": "runs/x"}


def changed(**dotted) -> dict:
    recipe = json.loads(json.dumps(RECIPE))
    for key, value in dotted.items():
        *sections, last = key.split(".")
        node = recipe
        for section in sections:
            node = node[int(section)] if section.isdigit() else node[section]
        node[last] = value
    return recipe


def test_recipe_changes_are_dotted_keys_old_and_new():
    assert recipe_changes(RECIPE, changed(**{"train.lr": 1e-4, "losses.1.weight": 10.0})) == [
        ("losses.1.weight", 100.0, 10.0), ("train.lr", 0.0002, 1e-4)]
    assert repr(recipe_changes(RECIPE, changed(**{"train.seed": 3}))[0][1]) == "(unset)"


def test_schedule_and_cadence_may_change_on_resume_with_a_note(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    notes = []
    new = changed(**{"train.max_steps": 400, "train.log_every": 50, "data.num_workers": 0, "output_dir": "elsewhere"})
    assert len(check_resume_changes(tmp_path, new, note=notes.append)) == 4
    assert notes == ["resuming with a changed recipe: data.num_workers 2 -> 0, output_dir 'runs/x' -> 'elsewhere', "
                     "train.log_every 10 -> 50, train.max_steps 100 -> 400"]


def test_other_changes_on_resume_need_allow_changes(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    new = changed(**{"train.lr": 1e-4, "data.crop_size": 128, "train.max_steps": 400})
    with pytest.raises(RunDirError) as caught:
        check_resume_changes(tmp_path, new)
    message = str(caught.value)
    assert "data.crop_size 256 -> 128" in message and "train.lr 0.0002 -> 0.0001" in message
    assert "--allow-changes to resume with data.crop_size, train.lr changed" in message and "\n" not in message
    notes = []
    assert len(check_resume_changes(tmp_path, new, allow_changes=True, note=notes.append)) == 3
    assert "data.crop_size 256 -> 128" in notes[0]


def test_an_unchanged_recipe_or_a_run_without_one_says_nothing(tmp_path):
    notes = []
    assert check_resume_changes(tmp_path, RECIPE, note=notes.append) == []
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(RECIPE))
    assert check_resume_changes(tmp_path, RECIPE, note=notes.append) == [] and notes == []


# ---------------------------------------------------------------------- log
def test_truncate_log_drops_the_steps_to_be_redone_and_a_half_written_line(tmp_path):
    records = [{"step": s, "G_L1": 1.0} for s in (2, 4, 6)] + [{"step": 4, "eval_fid": 9.0}, {"note": "no step"}]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 8, "G_')
    assert truncate_log(tmp_path, 4) == 2
    kept = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert kept == [records[0], records[1], records[3], records[4]]
    assert truncate_log(tmp_path, 4) == 0
    assert truncate_log(tmp_path / "nothing", 4) == 0


def test_a_key_an_older_i2i_did_not_write_is_no_change_at_its_default(tmp_path):
    from conftest import tiny_recipe
    from i2i.recipe import Recipe

    current = Recipe.from_dict(tiny_recipe()).model_dump(mode="json")
    older = json.loads(json.dumps(current))
    del older["train"]["d_lr_ratio"]  # written before the option existed
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(older))
    assert check_resume_changes(tmp_path, current) == []
    with pytest.raises(RunDirError, match=r"train.d_lr_ratio 1.0 -> 2.0"):
        check_resume_changes(tmp_path, {**current, "train": {**current["train"], "d_lr_ratio": 2.0}})
