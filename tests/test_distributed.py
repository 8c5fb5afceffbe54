"""Two CPU processes (gloo) with batch b train the same weights as one process with batch 2b,
and log the losses of both."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

from i2i.engine.checkpoint import checkpoint_step, latest_checkpoint
from i2i.engine.distributed import leave, without_option
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import ROOT, tiny_recipe


def without_batchnorm(batch_size: int, gan_mode: str = "vanilla") -> dict:
    """No BatchNorm and no dropout: the per-process batches then add up to the global one exactly."""
    recipe = tiny_recipe(train={"batch_size": batch_size, "epochs": 1, "epochs_decay": 0, "tensorboard": False},
                         losses=[{"name": "gan", "params": {"mode": gan_mode}}, {"name": "l1", "weight": 100.0}])
    for role in ("generator", "discriminator"):
        recipe["model"][role]["params"]["norm"] = "none"
    recipe["model"]["generator"]["params"]["dropout"] = 0.0
    return recipe


# wgan-gp: the penalty's double backward goes through DDP, and its per-sample interpolation
# weights must be the ones one process draws for the same samples.
@pytest.mark.parametrize("gan_mode", ["vanilla", "wgan-gp"])
def test_two_processes_match_one_with_twice_the_batch(tmp_path, gan_mode):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(without_batchnorm(batch_size=2, gan_mode=gan_mode)))
    command = [sys.executable, "-m", "i2i", "run", str(recipe_file), "--nproc", "2", "--out", str(tmp_path / "ddp"), "--quiet"]
    subprocess.run(command, check=True, cwd=ROOT, timeout=600)

    recipe = Recipe.from_dict(without_batchnorm(batch_size=4, gan_mode=gan_mode))
    init = Trainer(recipe, run_dir=tmp_path / "init").generator.state_dict()
    single = Trainer(recipe, run_dir=tmp_path / "single")
    single.fit()
    checkpoint = latest_checkpoint(tmp_path / "ddp")
    assert checkpoint_step(checkpoint) == single.step == 2
    distributed = load_file(checkpoint / "generator.safetensors")
    for name, weight in single.generator.state_dict().items():
        moved = (weight - init[name]).abs().max()
        assert moved > 1e-5, f"{name} did not train"
        # As a norm, not element by element: where a gradient is near rounding level, Adam's
        # m / sqrt(v) turns the summation order of two half batches into a flipped step for that
        # element (seen on an Intel Xeon with AMX: 2e-4 on a weight that moved 4e-4). A process
        # that missed the other's gradients differs by the whole update.
        difference = torch.linalg.vector_norm(distributed[name] - weight)
        assert difference < 0.02 * torch.linalg.vector_norm(weight - init[name]), name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def two_nodes(recipe_file: Path, nodes: list[Path], *args: str) -> None:
    """``i2i run`` as two torchrun "nodes" on 127.0.0.1 (c10d rendezvous, one gloo process
    each), each in its own folder, as if on machines that share no filesystem."""
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "I2I_ENGINE_PROBE": "0"}
    launches = [
        subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                          "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint,
                          "--rdzv-id", endpoint, "-m", "i2i", "run", str(recipe_file), "--quiet", *args],
                         cwd=node, env=env)
        for rank, node in enumerate(nodes)
    ]
    try:
        assert [launch.wait(timeout=300) for launch in launches] == [0, 0]
    finally:
        for launch in launches:
            launch.kill()


def test_two_nodes_resume_from_rank_0s_checkpoint_and_match_one_process(tmp_path):
    recipe = without_batchnorm(batch_size=2)
    recipe["train"]["epochs"] = 2  # 8 pairs at a global batch of 4: 4 steps
    recipe["output_dir"] = "run"  # relative: each node's own folder
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    for node in nodes:
        node.mkdir()
    two_nodes(recipe_file, nodes, "--set", "train.max_steps=2")
    (holder,) = [node for node in nodes if (node / "run").exists()]  # rank 0's node alone writes the run
    assert latest_checkpoint(holder / "run").name == "step_00000002"
    two_nodes(recipe_file, nodes, "--resume")  # the other node has no checkpoint: it gets rank 0's
    assert [node for node in nodes if (node / "run").exists()] == [holder]

    recipe = Recipe.from_dict({**without_batchnorm(batch_size=4), "train": {
        **without_batchnorm(batch_size=4)["train"], "epochs": 2}})
    init = Trainer(recipe, run_dir=tmp_path / "init").generator.state_dict()
    single = Trainer(recipe, run_dir=tmp_path / "single")
    single.fit()
    checkpoint = latest_checkpoint(holder / "run")
    assert checkpoint_step(checkpoint) == single.step == 4
    distributed = load_file(checkpoint / "generator.safetensors")
    # A norm, as in the test above; four steps let the flipped near-zero updates add up (3% of
    # a bias's update measured on an Intel Xeon with AMX). Ranks that missed each other's
    # gradients or a rank that resumed from other weights would be off by the whole update.
    for name, weight in single.generator.state_dict().items():
        difference = torch.linalg.vector_norm(distributed[name] - weight)
        assert difference < 0.1 * torch.linalg.vector_norm(weight - init[name]), name


def train_and_record_losses(rank: int, world_size: int, recipe: dict, folder: Path) -> None:
    """One rank of a gloo run; writes the losses this rank computed at each step."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=world_size)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=folder / "run", rank=rank, world_size=world_size)
    step, computed = trainer.train_step, []

    def recorded_step(real_a, real_b):
        losses = step(real_a, real_b)
        computed.append({key: float(value) for key, value in losses.items()})
        return losses

    trainer.train_step = recorded_step
    trainer.fit()
    (folder / f"rank{rank}.json").write_text(json.dumps(computed))
    del trainer, step, recorded_step  # every holder of the trainer's DDP modules, before the group goes
    leave()


def test_logged_losses_are_the_mean_over_ranks(tmp_path):
    recipe = without_batchnorm(batch_size=2)
    recipe["train"].update(epochs=2, log_every=2)  # 4 steps, 2 records of 2 steps each
    mp.spawn(train_and_record_losses, args=(2, recipe, tmp_path), nprocs=2)

    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [2, 4]
    for record in records:
        window = [losses for computed in ranks for losses in computed[record["step"] - 2 : record["step"]]]
        for key in ("G_GAN", "G_l1", "D_real", "D_fake"):
            assert record[key] == pytest.approx(sum(losses[key] for losses in window) / len(window), rel=1e-6)
    assert ranks[0][0]["G_l1"] != pytest.approx(ranks[1][0]["G_l1"]), "the ranks see different images"


def test_launch_drops_the_nproc_option_for_the_ranks():
    args = ["run", "r.yaml", "--nproc", "2", "--set", "train.lr=1", "--nproc=3", "--out", "x"]
    assert without_option(args, "--nproc") == ["run", "r.yaml", "--set", "train.lr=1", "--out", "x"]


def test_resume_maps_steps_across_world_sizes(tmp_path):
    trainer = Trainer(Recipe.from_dict(without_batchnorm(batch_size=2)), run_dir=tmp_path, rank=0, world_size=1)
    # 8 pairs, batch 2: 4 steps per epoch alone, 2 per epoch in each of 2 processes.
    assert trainer.step_for_world_size(5, saved_world_size=2) == 2 * 4 + 2
    assert trainer.step_for_world_size(5, saved_world_size=1) == 5


def cyclegan_without_pool(batch_size: int) -> Recipe:
    """CycleGAN with instance norm (per sample, so batches split exactly) and no image pool
    (each process would keep its own)."""
    return Recipe.from_dict(tiny_recipe(
        method={"name": "cyclegan", "params": {"pool_size": 0}},
        model={"generator": {"name": "resnet", "params": {"ngf": 4, "n_blocks": 1}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}}},
        losses=[{"name": "gan", "params": {"mode": "lsgan"}}],
        train={"batch_size": batch_size, "tensorboard": False},
    ))


def fixed_batches() -> tuple[torch.Tensor, torch.Tensor]:
    rng = torch.Generator().manual_seed(0)
    return tuple((torch.rand(4, 3, 32, 32, generator=rng) * 2 - 1).double() for _ in range(2))


def cyclegan_rank(rank: int, folder: Path) -> None:
    """One rank of a two-process CycleGAN step in float64, on its half of ``fixed_batches``."""
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
    trainer = Trainer(cyclegan_without_pool(2), run_dir=folder / "run", rank=rank, world_size=2)
    real_a, real_b = fixed_batches()
    for _ in range(2):
        trainer.train_step(real_a[rank::2], real_b[rank::2])
    if rank == 0:
        torch.save({name: network.state_dict() for name, network in trainer.networks.items()}, folder / "ddp.pt")
    del trainer
    leave()


def test_cyclegan_two_processes_match_one_with_twice_the_batch(tmp_path):
    """Four networks, each generator called three times a step, both discriminators also run
    outside DDP while the generators update. In float64: in float32, Adam's first steps turn
    the rounding of gradients near zero (two half batches summed in another order) into
    flipped updates (measured: 4-8% of an update's norm), which would hide a real fault."""
    mp.spawn(cyclegan_rank, args=(tmp_path,), nprocs=2)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        single = Trainer(cyclegan_without_pool(4), run_dir=tmp_path / "single")
        init = {name: {k: v.clone() for k, v in network.state_dict().items()} for name, network in single.networks.items()}
        real_a, real_b = fixed_batches()
        for _ in range(2):
            single.train_step(real_a, real_b)
    finally:
        torch.set_default_dtype(default)
    distributed = torch.load(tmp_path / "ddp.pt")
    for name, network in single.networks.items():
        for key, weight in network.state_dict().items():
            update = torch.linalg.vector_norm(weight - init[name][key])
            if update < 1e-8:  # a conv bias before instance norm: its gradient is zero but for rounding
                assert torch.linalg.vector_norm(distributed[name][key] - weight) < 1e-8, f"{name}.{key}"
                continue
            assert torch.linalg.vector_norm(distributed[name][key] - weight) < 1e-9 * update, f"{name}.{key}"


@pytest.mark.parametrize("finished", [True, False])
def test_leave_waits_for_the_other_ranks_only_when_every_rank_finished(finished, tmp_path, monkeypatch):
    """After a failure a peer may never reach the barrier: leaving must not wait for it."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    waited = []
    monkeypatch.setattr(dist, "barrier", lambda: waited.append(True))
    leave(finished)
    assert waited == ([True] if finished else []) and not dist.is_initialized()
