"""The CUDA-graphed training step computes what the eager step computes.

N steps of each, from one seed on the same batches, through a learning-rate change: the
same losses and weights, bit for bit in fp32, within bf16's rounding in bf16.
``benchmarks/gpu_check.sh`` records the CUDA verdict as ``graph_equals_eager``. The
comparison itself runs on the CPU too, on two eager trainers.
"""

from __future__ import annotations

import pytest
import torch

from i2i.engine.compiled import GraphedStep
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe

STEPS = 10  # 3 eager warm-up steps, the capture, then replays; the learning rate changes 3 from the end
SIZE = 64  # a U-Net of 6 levels, deep enough for dropout (the flagship's random draws) at 64x64

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CUDA graph); the CPU tests check the comparison")


def batches(count: int = STEPS) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(7)
    return [tuple(torch.rand(2, 3, SIZE, SIZE, generator=generator) * 2 - 1 for _ in range(2)) for _ in range(count)]


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().float().cpu().clone()
            for name, network in trainer.networks.items() for key, value in network.state_dict().items()}


def train(settings: dict, run_dir, steps: list[tuple[torch.Tensor, torch.Tensor]], dropout: float = 0.5) -> dict:
    """Losses of each step, and the weights before and after, of a tiny pix2pix with the engine
    ``settings`` on ``steps``."""
    recipe = tiny_recipe(train={"batch_size": 2, "compile": False, "fused_adam": True, "channels_last": True,
                                "epochs": 1, "epochs_decay": 3, **settings},
                         data={"dataset": {"name": "synthetic", "params": {"length": 4, "size": SIZE + 8}},
                               "load_size": SIZE + 8, "crop_size": SIZE})
    recipe["model"]["generator"]["params"].update(num_downs=6, dropout=dropout)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=run_dir)
    for network in trainer.networks.values():
        network.train()
    start, losses = weights(trainer), []
    for step, (real_a, real_b) in enumerate(steps):
        if step == len(steps) - 3:
            trainer.set_epoch(2)  # a third of the learning rate: it must reach the captured step
        real_a, real_b = (t.to(trainer.device).contiguous(memory_format=trainer.memory_format) for t in (real_a, real_b))
        # read at once: a replay overwrites the graph's loss tensors
        losses.append({key: float(value) for key, value in trainer.train_step(real_a, real_b).items()})
    return {"losses": losses, "start": start, "end": weights(trainer), "step": trainer.train_step}


def assert_same_training(found: dict, expected: dict, tolerance: float | None = None) -> None:
    """Bit for bit (``tolerance`` None), or losses within ``tolerance`` relative and each
    network's weight update within ``tolerance`` of the expected update's norm (low precision
    rounds near-zero gradients either way, which flips single Adam steps)."""
    assert all(torch.equal(found["start"][key], value) for key, value in expected["start"].items()), \
        "the two trainers did not start from the same weights"
    if tolerance is None:
        assert found["losses"] == expected["losses"]
        differing = [key for key, value in expected["end"].items() if not torch.equal(found["end"][key], value)]
        assert not differing, f"{len(differing)} tensors differ, such as {differing[:3]}"
        return
    for step, (got, want) in enumerate(zip(found["losses"], expected["losses"], strict=True)):
        assert got == pytest.approx(want, rel=tolerance), f"step {step}"
    for network in {key.split(".")[0] for key in expected["end"]}:
        keys = [key for key in expected["end"] if key.startswith(network + ".")]
        update = [expected["end"][key] - expected["start"][key] for key in keys]
        difference = [found["end"][key] - expected["end"][key] for key in keys]
        norm = torch.cat([u.flatten() for u in update]).norm()
        assert torch.cat([d.flatten() for d in difference]).norm() <= tolerance * norm, network


def test_one_seed_trains_identically_and_the_comparison_sees_a_difference(tmp_path):
    steps = batches()
    settings = {"device": "cpu", "precision": "fp32"}
    first = train(settings, tmp_path / "a", steps)
    assert_same_training(train(settings, tmp_path / "b", steps), first)
    other = train(settings, tmp_path / "c", steps[:-1] + batches(STEPS + 1)[-1:])  # one other last batch
    with pytest.raises(AssertionError):
        assert_same_training(other, first)
    with pytest.raises(AssertionError):
        assert_same_training(other, first, tolerance=1e-6)


@cuda
@pytest.mark.parametrize(("precision", "dropout", "tolerance"), [
    ("fp32", 0.0, None),
    ("fp32", 0.5, None),  # dropout: the replayed graph must draw the eager step's masks
    ("bf16", 0.5, 2e-2),
])
def test_cuda_graphed_step_equals_the_eager_step(tmp_path, monkeypatch, precision, dropout, tolerance):
    # cudnn.benchmark (the trainer's) may pick a nondeterministic algorithm, which would make
    # even two eager runs differ
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    steps = batches()
    settings = {"device": "cuda", "precision": precision}
    eager = train({**settings, "cuda_graph": False}, tmp_path / "eager", steps, dropout)
    assert_same_training(train({**settings, "cuda_graph": False}, tmp_path / "eager2", steps, dropout), eager), \
        "two eager runs differ: the comparison below would mean nothing"
    graphed = train({**settings, "cuda_graph": True}, tmp_path / "graph", steps, dropout)
    step = graphed["step"]
    assert isinstance(step, GraphedStep) and step.graph is not None and not step.failed, "the step was not captured"
    assert_same_training(graphed, eager, tolerance)
