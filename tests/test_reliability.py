"""Faults during training and loading: signals, NaN/Inf, hostile files, a full disk, no memory."""

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from i2i.engine import checkpoint as checkpoint_module
from i2i.engine.checkpoint import CheckpointError, checkpoint_step, list_checkpoints, load_state, load_weights, verify_checkpoint
from i2i.engine.faults import NonFiniteError, TrainingInterrupted
from i2i.engine.callbacks import Callback
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, RecipeError
from i2i.errors import I2IError

from conftest import ROOT, tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(run_dir: Path, **train) -> Trainer:
    recipe = tiny_recipe()
    recipe["train"].update({"batch_size": 2, "checkpoint_every": 1, "log_every": 5, **train})
    return Trainer(Recipe.from_dict(recipe), run_dir=run_dir)


class AtStep(Callback):
    def __init__(self, step: int, action):
        self.step, self.action = step, action

    def on_step(self, trainer):
        if trainer.step == self.step:
            self.action()


def steps_saved(run_dir: Path) -> list[int]:
    return [checkpoint_step(p) for p in list_checkpoints(run_dir / "checkpoints")]


# ------------------------------------------------------------------- signals
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_at_the_step_boundary_and_stops(signum, tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=1000, max_steps=6)
    trainer.callbacks.append(AtStep(2, lambda: os.kill(os.getpid(), signum)))
    with pytest.raises(TrainingInterrupted, match=f"stopped by {signal.Signals(signum).name} at step 2") as caught:
        trainer.fit()
    assert caught.value.exit_code == 128 + signum
    assert steps_saved(tmp_path) == [2]
    assert signal.getsignal(signum) is not trainer.stop._on_signal  # handlers are put back


def test_a_second_sigint_stops_at_once_without_saving(tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=1000, max_steps=6)
    trainer.callbacks.append(AtStep(2, lambda: [os.kill(os.getpid(), signal.SIGINT) for _ in range(2)]))
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert steps_saved(tmp_path) == []


def test_ctrl_c_on_i2i_run_saves_and_exits_130(write_recipe, tmp_path):
    recipe = tiny_recipe(train={"epochs": 1000, "checkpoint_every": 1, "log_every": 1})
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "i2i", "run", str(write_recipe(recipe)), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
    )
    deadline = time.monotonic() + 120
    while not steps_saved(out):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "stopped by SIGINT at step" in stderr and "--resume" in stderr
    stopped_at = int(stderr.split("stopped by SIGINT at step")[1].split()[0])
    assert steps_saved(out)[-1] == stopped_at
    verify_checkpoint(list_checkpoints(out / "checkpoints")[-1])


# ------------------------------------------------------------------ NaN / Inf
def poison_batch_at(trainer: Trainer, step: int, value: float) -> None:
    """The batch of ``step`` (1-based) gets ``value`` in every input pixel."""
    original = trainer.train_step

    def train_step(real_a, real_b):
        if trainer.step + 1 == step:
            real_a = torch.full_like(real_a, value)
        return original(real_a, real_b)

    trainer.train_step = train_step


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nonfinite_loss_stops_naming_step_and_term_and_keeps_the_last_good_checkpoint(value, tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6)
    poison_batch_at(trainer, 3, value)
    with pytest.raises(NonFiniteError, match=r"at step 3: .*D_real \(from step 3\)"):
        trainer.fit()
    assert steps_saved(tmp_path) == [1, 2]
    last = list_checkpoints(tmp_path / "checkpoints")[-1]
    verify_checkpoint(last)
    assert all(torch.isfinite(t).all() for t in load_file(last / "generator.safetensors").values())


def test_a_nonfinite_stop_names_the_checkpoint_kept_and_never_claims_one_that_does_not_exist(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6)
    poison_batch_at(trainer, 3, float("nan"))
    with pytest.raises(NonFiniteError, match=rf"The last good checkpoint is kept: {tmp_path}/checkpoints/step_00000002;"):
        trainer.fit()
    trainer = make_trainer(tmp_path / "early", max_steps=6, checkpoint_every=1000, log_every=1)
    poison_batch_at(trainer, 1, float("nan"))
    with pytest.raises(NonFiniteError) as caught:
        trainer.fit()
    assert f"No checkpoint was saved before this (none in {tmp_path / 'early' / 'checkpoints'})" in str(caught.value)
    assert "kept" not in str(caught.value)


def test_a_nonfinite_gradient_with_finite_losses_stops_naming_the_network(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=6)
    weight = next(trainer.generator.parameters())
    weight.register_hook(lambda grad: grad * float("nan") if trainer.step + 1 == 3 else grad)
    with pytest.raises(NonFiniteError, match=r"at step 3: gradient of the generator \(from step 3\)"):
        trainer.fit()
    assert steps_saved(tmp_path) == [1, 2]


def test_skip_policy_drops_the_poisoned_update_and_counts_it(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=4, on_nonfinite="skip")
    poison_batch_at(trainer, 3, float("nan"))
    snapshots = {}
    for step in (2, 3):
        trainer.callbacks.append(AtStep(step, lambda step=step: snapshots.__setitem__(step, {
            net: {k: v.clone() for k, v in getattr(trainer, net).state_dict().items()}
            for net in ("generator", "discriminator")})))
    losses = trainer.fit()
    assert trainer.step == 4 and trainer.guard.skipped_steps == 1
    assert all(v == v for v in losses.values())
    assert json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])["skipped_steps"] == 1
    for net in ("generator", "discriminator"):  # weights and BatchNorm statistics as before step 3
        assert all(torch.equal(snapshots[2][net][k], snapshots[3][net][k]) for k in snapshots[2][net])
    assert load_state(tmp_path / "checkpoints" / "step_00000004" / "state.pt")["skipped_steps"] == 1


# ------------------------------------------------------------- safe loading
class RunsCode:
    """Unpickling this would create ``marker``: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_a_pickle_that_runs_code_is_refused_and_never_run(writer, tmp_path):
    marker, file = tmp_path / "code-ran", tmp_path / "state.pt"
    payload = {"step": 1, "opt_g": RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, file)
    else:
        file.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CheckpointError, match="refusing to load .*would run code"):
        load_state(file)
    assert not marker.exists()


def test_resume_refuses_a_hostile_state_file_even_with_a_matching_manifest(tmp_path):
    make_trainer(tmp_path, max_steps=1).fit()
    checkpoint = list_checkpoints(tmp_path / "checkpoints")[-1]
    marker = tmp_path / "code-ran"
    torch.save({"step": 1, "opt_g": RunsCode(marker)}, checkpoint / "state.pt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["state.pt"] = checkpoint_module.sha256_file(checkpoint / "state.pt")
    manifest["sizes"]["state.pt"] = (checkpoint / "state.pt").stat().st_size
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refusing to load"):
        make_trainer(tmp_path, max_steps=2).fit(resume=True)
    assert not marker.exists()


def test_a_state_file_of_plain_but_wrong_data_is_a_clear_error(tmp_path):
    make_trainer(tmp_path, max_steps=1).fit()
    checkpoint = list_checkpoints(tmp_path / "checkpoints")[-1]
    torch.save({"step": 1}, checkpoint / "state.pt")
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    manifest["files"]["state.pt"] = checkpoint_module.sha256_file(checkpoint / "state.pt")
    manifest["sizes"]["state.pt"] = (checkpoint / "state.pt").stat().st_size
    (checkpoint / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="not a training state.*KeyError"):
        make_trainer(tmp_path, max_steps=2).fit(resume=True)


def test_generator_weights_with_hostile_metadata_are_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    from i2i.engine.inference import load_generator

    file = tmp_path / "g.safetensors"
    save_file({"w": torch.zeros(1)}, file, metadata={"recipe": "name: x", "in_channels": "three", "out_channels": "3"})
    with pytest.raises(CheckpointError, match="lacks readable i2i metadata"):
        load_generator(file)
    save_file({"w": torch.zeros(1)}, file)
    with pytest.raises(CheckpointError, match="not written by i2i"):
        load_generator(file)


def test_a_recipe_with_a_python_tag_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        Recipe.from_file(recipe)
    assert not marker.exists()


@pytest.mark.parametrize("place", ["name: *x9", "losses: *x9", "train: {betas: *x9}",
                                   "model: {generator: {name: unet, params: {ngf: *x9}}}"])
def test_a_yaml_alias_bomb_gives_a_short_error_at_once(place, tmp_path):
    """Nine levels of nine references: 387 million strings if anything walked or printed it all."""
    levels = [f"x{i}: &x{i} [{', '.join([f'*x{i - 1}'] * 9)}]" for i in range(1, 10)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(["x0: &x0 lol", *levels, place]))
    with pytest.raises(RecipeError) as caught:
        Recipe.from_file(recipe)
    assert len(str(caught.value)) < 10_000


def test_a_checkpoint_of_another_architecture_lists_the_mismatched_tensors(tmp_path):
    make_trainer(tmp_path, max_steps=1).fit()
    file = list_checkpoints(tmp_path / "checkpoints")[-1] / "generator.safetensors"
    recipe = tiny_recipe()
    recipe["model"]["generator"]["params"] = {"num_downs": 4, "ngf": 4}
    other = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path / "other").generator
    with pytest.raises(CheckpointError) as caught:
        load_weights(other, file)
    message = str(caught.value)
    assert "does not fit the model built from the recipe" in message
    assert "shape of down.0.weight: checkpoint (8, 3, 4, 4), model (4, 3, 4, 4)" in message
    assert "unexpected down.4." in message


def test_a_damaged_newest_checkpoint_is_passed_over_on_resume(tmp_path, capsys):
    make_trainer(tmp_path, max_steps=2).fit()
    newest = list_checkpoints(tmp_path / "checkpoints")[-1]
    (newest / "generator.safetensors").write_bytes(b"\0" * 64)
    resumed = make_trainer(tmp_path, max_steps=3)
    resumed.resume()
    assert resumed.step == 1
    assert "passing over a damaged checkpoint" in capsys.readouterr().out


# ----------------------------------------------------------- resource faults
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    write = checkpoint_module.write_file

    def fills_the_disk(path, data, durable=False):
        if path.parent.name == ".step_00000002.tmp" and path.name == "state.pt":
            path.write_bytes(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        write(path, data, durable)

    monkeypatch.setattr(checkpoint_module, "write_file", fills_the_disk)
    with pytest.raises(CheckpointError, match=r"disk full.*step_00000001 is intact"):
        make_trainer(tmp_path, max_steps=3).fit()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000001"]
    verify_checkpoint(tmp_path / "checkpoints" / "step_00000001")


def test_disk_full_on_a_real_small_file_system(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    # room for one checkpoint of the tiny model (3.3 MB) and not for a second one
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)], capture_output=True
    ).returncode == 0
    if not mounted:
        pytest.skip("mounting a tmpfs needs root")
    try:
        with pytest.raises(CheckpointError, match=r"disk full.*step_00000001 is intact"):
            make_trainer(disk, max_steps=3).fit()
        assert [p.name for p in (disk / "checkpoints").iterdir()] == ["step_00000001"]
        verify_checkpoint(disk / "checkpoints" / "step_00000001")
    finally:
        subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("error", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to allocate 1073741824 bytes"),
])
def test_out_of_memory_at_start_suggests_smaller_settings(error, tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2, precision="fp32")  # the static choice is bf16 on AVX-512 bf16 / AMX

    def train_step(real_a, real_b):
        raise error

    trainer.train_step = train_step
    with pytest.raises(I2IError, match=r"out of memory \(step 0 on cpu: train.batch_size 2, data.crop_size 32, "
                                       r"precision float32\). Try a smaller train.batch_size or data.crop_size"):
        trainer.fit()


def test_other_runtime_errors_pass_through(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=2)

    def train_step(real_a, real_b):
        raise RuntimeError("shapes do not match")

    trainer.train_step = train_step
    with pytest.raises(RuntimeError, match="shapes do not match"):
        trainer.fit()


# ------------------------------------------------------------ misleading figures
class MeanColour(torch.nn.Module):
    """A stand-in for the Inception features: the mean colour of each image."""

    def forward(self, images):
        return images.float().mean((2, 3))


def test_bench_quality_on_the_train_split_warns_and_records_it(tmp_path, fake_data_root, capsys):
    from i2i.bench.quality import bench_quality

    make_trainer(tmp_path / "run", max_steps=1).fit()
    capsys.readouterr()
    scored = {split: bench_quality(tmp_path / "run", fake_data_root, limit=2, device="cpu", split=split, results=None,
                                   extractor=MeanColour()) for split in ("val", "train")}
    assert "warning" not in scored["val"]
    assert scored["train"]["warning"].startswith(f"scoring the train split of {fake_data_root}: if the generator was "
                                                 f"trained on it, these figures measure memory")
    assert capsys.readouterr().err.count("WARNING: scoring the train split") == 1


@pytest.mark.parametrize("each_epoch,expected", [(True, [4, 8]), (False, [3, 6, 8])])
def test_epoch_end_checkpoints_can_be_turned_off(each_epoch, expected, tmp_path):
    trainer = make_trainer(tmp_path, checkpoint_every=3 if not each_epoch else 1000, keep_checkpoints=10,
                           checkpoint_each_epoch=each_epoch)  # 8 samples at batch 2: 4 steps an epoch, 2 epochs
    trainer.fit()
    assert steps_saved(tmp_path) == expected
