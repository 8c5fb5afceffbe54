"""kill -9 of a real training process at random moments, during checkpoint saves too:
every checkpoint left on disk verifies, and resuming after each kill ends with the
weights of an uninterrupted run, bit for bit.

The training processes fork from a server that has imported torch once, so that a
kill and restart costs a fraction of a second rather than a full interpreter start.
"""

import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from i2i.engine.checkpoint import checkpoint_step, list_checkpoints, verify_checkpoint

from conftest import tiny_recipe

KILLS = 10
TOTAL_STEPS = 32  # 4 steps per epoch, 4 + 4 epochs: more than ten kills get through


def train_until_done(recipe: dict, run_dir: str) -> None:
    from i2i.engine.trainer import Trainer
    from i2i.recipe import Recipe

    torch.set_num_threads(1)  # the same arithmetic in every process, and no oversubscription
    Trainer(Recipe.from_dict(recipe), run_dir=Path(run_dir)).fit(resume=True)


def start(context, recipe: dict, run_dir: Path):
    process = context.Process(target=train_until_done, args=(recipe, str(run_dir)))
    process.start()
    return process


def newest_step(folder: Path) -> int:
    found = list_checkpoints(folder)
    return checkpoint_step(found[-1]) if found else 0


def wait_for(condition, process, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.is_alive(), f"training ended (exit code {process.exitcode}) before it could be killed"
        assert time.monotonic() < deadline, "training made no progress"
        time.sleep(0.001)


def saves_in_progress(folder: Path) -> set[tuple[str, int]]:
    """Temporary checkpoint folders; a killed save leaves one until the next save clears it."""
    if not folder.is_dir():
        return set()
    return {(p.name, p.stat().st_ctime_ns) for p in folder.glob(".*.tmp")}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """Every network of the last checkpoint, and the method's state (CycleGAN's pools)."""
    last = list_checkpoints(run_dir / "checkpoints")[-1]
    assert last.name == f"step_{TOTAL_STEPS:08d}"
    weights = {f"{file.stem}.{k}": v for file in sorted(last.glob("*.safetensors")) for k, v in load_file(file).items()}
    method_state = torch.load(last / "state.pt", weights_only=False)["method"]
    return weights | {f"method.{key}.{i}": x for key, images in method_state.items() for i, x in enumerate(images)}


RECIPES = {
    "pix2pix": {},
    "cyclegan": {  # a pool of 2 fills in one step: the later steps draw from it
        "method": {"name": "cyclegan", "params": {"pool_size": 2}},
        "model": {"generator": {"name": "resnet", "params": {"ngf": 4, "n_blocks": 1}},
                  "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}}},
        "losses": [{"name": "gan", "params": {"mode": "lsgan"}}],
    },
}


@pytest.mark.parametrize("method", RECIPES)
def test_kill_9_at_random_moments_loses_nothing(tmp_path, method):
    recipe = tiny_recipe(**RECIPES[method], train={"epochs": 4, "epochs_decay": 4, "batch_size": 2, "checkpoint_every": 1,
                                                   "keep_checkpoints": 2, "log_every": 5})
    context = multiprocessing.get_context("forkserver")
    # torch._dynamo is imported lazily by the first optimizer: seconds per process otherwise.
    context.set_forkserver_preload(["i2i.engine.trainer", "torch._dynamo", "PIL.PngImagePlugin"])

    reference = start(context, recipe, tmp_path / "reference")
    reference.join()
    assert reference.exitcode == 0

    run_dir, rng = tmp_path / "killed", random.Random(0)
    folder = run_dir / "checkpoints"
    kills_during_save = 0
    for kill in range(KILLS):
        before = newest_step(folder)
        process = start(context, recipe, run_dir)
        if kill % 2:
            leftovers = saves_in_progress(folder)
            wait_for(lambda: saves_in_progress(folder) - leftovers, process)  # a save has begun: kill it part-way
            time.sleep(rng.uniform(0, 0.001))
            kills_during_save += bool(saves_in_progress(folder) - leftovers)
        else:
            wait_for(lambda: newest_step(folder) > before, process)
            time.sleep(rng.uniform(0, 0.05))
        os.kill(process.pid, signal.SIGKILL)
        process.join()
        assert process.exitcode == -signal.SIGKILL
        for checkpoint in list_checkpoints(folder):
            verify_checkpoint(checkpoint)
        assert newest_step(folder) >= before, "a kill lost a finished checkpoint"
    assert newest_step(folder) < TOTAL_STEPS
    assert kills_during_save >= 1

    finish = start(context, recipe, run_dir)
    finish.join()
    assert finish.exitcode == 0
    expected, got = final_weights(tmp_path / "reference"), final_weights(run_dir)
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
