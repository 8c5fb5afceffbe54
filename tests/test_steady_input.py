"""Steady input: one DataLoader whose workers live across epochs, yet a sample stays a
function of (seed, epoch, index); and the steadiness measure of benchmarks/gpu_check.sh."""

import os

import pytest
import torch

from i2i.bench.steady import log_window_times, steadiness
from i2i.data.synthetic import SyntheticDataset, SyntheticParams
from i2i.engine.schedule import EpochSampler
from i2i.engine.setup import TrainingBatches
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe


class WorkerTagged(SyntheticDataset):
    """Each sample says which process made it."""

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "pid": os.getpid()}


def epochs(workers: int, first: int = 0, start: int = 0, last: int = 3) -> list[dict]:
    """Every batch of epochs ``first``..``last - 1``, the first of them from sample ``start`` on.
    Only the sampler is told the epoch, as ``Trainer.set_epoch`` tells it: the workers learn
    it from the keys."""
    recipe = Recipe.from_dict(tiny_recipe(data={"num_workers": workers}, train={"batch_size": 2}))
    dataset = WorkerTagged(SyntheticParams(length=8, size=40), recipe.data, "train", True, recipe.train.seed)
    sampler = EpochSampler(len(dataset), recipe.train.seed)
    batches = TrainingBatches(recipe, dataset, sampler, torch.device("cpu"))
    found = []
    for epoch in range(first, last):
        sampler.set_epoch(epoch, start if epoch == first else 0)
        found += [{**batch, "epoch": epoch} for batch in batches.epoch()]
    return found


def same_samples(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x["path"] == y["path"] and torch.equal(x["input"], y["input"]) and torch.equal(x["target"], y["target"])
        for x, y in zip(a, b)
    )


def test_persistent_workers_give_the_in_process_samples_every_epoch_and_on_resume():
    in_process, workers = epochs(0), epochs(2)
    assert same_samples(workers, in_process)
    pids = [{int(p) for b in workers if b["epoch"] == e for p in b["pid"]} for e in range(3)]
    assert pids[0] == pids[1] == pids[2] and os.getpid() not in pids[0], "the same worker processes every epoch"
    reference = WorkerTagged(SyntheticParams(length=8, size=40), Recipe.from_dict(tiny_recipe()).data, "train", True, 0)
    for batch in workers:  # each sample as the dataset makes it in its epoch
        reference.set_epoch(batch["epoch"])
        for path, image in zip(batch["path"], batch["input"]):
            assert torch.equal(image, reference[int(path.split("[")[1].rstrip("]"))]["input"])
    resumed = epochs(2, first=1, start=4)  # a run resumed 2 batches into epoch 1
    assert same_samples(resumed, [b for b in in_process if b["epoch"] >= 1][2:])


def fit(run_dir, workers: int, max_steps: int, resume: bool = False) -> Trainer:
    recipe = tiny_recipe(data={"num_workers": workers}, train={"batch_size": 2, "max_steps": max_steps})
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=run_dir)
    trainer.fit(resume=resume)
    return trainer


@pytest.mark.usefixtures("one_torch_thread")
def test_training_with_persistent_workers_equals_in_process_training_and_resumes_exactly(tmp_path):
    expected = fit(tmp_path / "in_process", 0, 7).generator.state_dict()  # 4 steps an epoch: two epochs
    fit(tmp_path / "split", 2, 3)
    for found in (fit(tmp_path / "workers", 2, 7), fit(tmp_path / "split", 2, 7, resume=True)):
        assert all(torch.equal(value, expected[key]) for key, value in found.generator.state_dict().items())


def test_steadiness_is_the_slowest_window_against_the_median_after_the_warm_up():
    records = [{"step": 100, "steps_per_s": 10.0},  # warm-up: left out
               {"step": 200, "steps_per_s": 100.0}, {"step": 200, "fid": 80.0},  # an evaluation record
               {"step": 300, "steps_per_s": 100.0}, {"step": 400, "steps_per_s": 50.0},
               {"step": 500, "steps_per_s": 100.0}, {"step": 530, "steps_per_s": 90.0}]  # a short last window
    times = log_window_times(records)
    assert times == pytest.approx([10.0, 1.0, 1.0, 2.0, 1.0])
    assert steadiness(times) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2 windows"):
        steadiness(times[:1])
