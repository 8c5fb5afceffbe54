"""The weights used for inference: the parameter average (``ema``) and BatchNorm statistics
recomputed for eval mode (``precise_bn``)."""

import pytest
import torch
from torch import nn

import i2i
from i2i.engine.build import build_dataset, build_generator
from i2i.engine.checkpoint import latest_checkpoint, read_weights
from i2i.engine.ema import ParameterAverage
from i2i.engine.inference import GENERATOR_FILE, INFERENCE_FILE, resolve_generator_file
from i2i.engine.precise_bn import fixed_batches, recompute_batchnorm
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe


def small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))


def test_the_average_copies_until_its_start_then_follows_with_the_warmed_up_decay():
    model = small_network()
    average = ParameterAverage(model, decay=0.9, start_step=2)
    assert [average.decay_at(step) for step in (1, 2, 3, 4)] == [0.0, 0.0, 2 / 11, 3 / 12]
    assert average.decay_at(1000) == 0.9
    history = []
    for step in range(1, 5):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(float(step))
        history.append([p.detach().clone() for p in model.parameters()])
        average.update(step)
    expected = [h2 * (1 - 2 / 11) + h1 * 2 / 11 for h1, h2 in zip(history[1], history[2])]  # step 3 onto step 2's copy
    expected = [h3 * (1 - 3 / 12) + e * 3 / 12 for e, h3 in zip(expected, history[3])]  # step 4
    for got, want in zip(average.averaged, expected):
        torch.testing.assert_close(got, want)
    for live, latest in zip(model.parameters(), history[3]):
        assert torch.equal(live, latest)  # the trained weights are only read


def test_the_warm_up_power_sets_the_width_of_the_average_before_its_decay_is_reached():
    assert ParameterAverage(small_network(), decay=0.999, power=4).decay_at(3) == 4 / 9
    steps = 2000
    for power, width in ((8.0, 0.0905), (4.0, 0.1409)):  # sqrt((power + 1) / (power + 3)) / (power + 2)
        average = ParameterAverage(small_network(), decay=0.999, power=power)
        weights, later = torch.zeros(steps + 1, dtype=torch.float64), 1.0
        for step in range(steps, 0, -1):  # step's weight in the final average: its share times the later decays
            weights[step] = (1 - average.decay_at(step)) * later
            later *= average.decay_at(step)
        position = torch.arange(steps + 1, dtype=torch.float64) / steps
        centre = (weights * position).sum()
        assert centre == pytest.approx((power + 1) / (power + 2), abs=0.005)
        assert ((weights * (position - centre) ** 2).sum().sqrt()) == pytest.approx(width, abs=0.003)


def test_an_average_updated_every_few_steps_folds_in_their_decay_at_once():
    model = small_network()
    average = ParameterAverage(model, decay=0.2, start_step=0, every=3)
    before = [p.clone() for p in average.averaged]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    average.update(1)
    average.update(2)
    assert all(torch.equal(a, b) for a, b in zip(average.averaged, before))  # not an update step
    average.update(3)
    assert average.decay_at(3) == pytest.approx(0.2**3)
    for got, old, live in zip(average.averaged, before, model.parameters()):
        torch.testing.assert_close(got, old + (1 - 0.2**3) * (live - old))


def test_the_average_saves_and_loads_exactly_and_names_a_missing_tensor():
    model = small_network()
    average = ParameterAverage(model, decay=0.99)
    with torch.no_grad():
        model[0].weight.mul_(3)
    average.update(5)
    saved = {name: tensor.clone() for name, tensor in average.state_dict().items()}
    assert set(saved) == {name for name, _ in model.named_parameters()}
    again = ParameterAverage(small_network(), decay=0.99)
    again.load_state_dict(saved)
    assert all(torch.equal(again.state_dict()[name], tensor) for name, tensor in saved.items())
    with pytest.raises(KeyError, match="0.weight"):
        again.load_state_dict({k: v for k, v in saved.items() if k != "0.weight"})


def test_recomputed_statistics_are_the_equal_weight_average_of_the_batches():
    model = small_network()
    model[1].running_mean.fill_(7.0)  # lagging statistics from training, to be replaced
    batches = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    seen = recompute_batchnorm(model, batches, dropout=False)
    assert seen == 3 and int(model[1].num_batches_tracked) == 3
    with torch.no_grad():
        features = [model[0](batch) for batch in batches]
    mean = torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean)
    torch.testing.assert_close(model[1].running_var, var)
    assert model[1].momentum == 0.1 and model.training  # the layers' own settings come back


def test_recomputing_with_dropout_is_deterministic_and_leaves_the_random_stream_alone():
    batches = [torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    first, second = small_network(), small_network()
    torch.manual_seed(123)
    recompute_batchnorm(first, batches, dropout=True)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # the caller's random stream did not move
    recompute_batchnorm(second, batches, dropout=True)
    assert torch.equal(first[4].running_var, second[4].running_var)
    without = small_network()
    recompute_batchnorm(without, batches, dropout=False)
    assert not torch.equal(without[4].running_var, first[4].running_var)  # dropout did act during the pass


def test_fixed_batches_are_training_crops_of_a_fixed_order_and_leave_the_dataset_alone():
    recipe = Recipe.from_dict(tiny_recipe())
    dataset = build_dataset(recipe, "train", train=True)
    dataset.set_epoch(5)
    first = list(fixed_batches(dataset, count=3, batch_size=2, seed=0))
    assert len(first) == 3 and first[0].shape == (2, 3, 32, 32)
    again = list(fixed_batches(dataset, count=3, batch_size=2, seed=0))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert dataset.epoch == 5
    assert len(list(fixed_batches(dataset, count=100, batch_size=3, seed=0))) == 3  # one pass at most (8 samples)
    generator = build_generator(recipe, dataset.in_channels, dataset.out_channels)
    assert recompute_batchnorm(generator, fixed_batches(dataset, 2, 2, 0), dropout=True) == 2


def train(run_dir, max_steps, resume=False, **settings) -> Trainer:
    train = {"batch_size": 2, "max_steps": max_steps, "checkpoint_every": 1000, "tensorboard": False,
             "ema": {"decay": 0.9, "start_step": 1, "every": 2}, "eval_bn_batches": 2, **settings}
    trainer = Trainer(Recipe.from_dict(tiny_recipe(train=train)), run_dir=run_dir)
    trainer.fit(resume=resume)
    return trainer


def test_a_checkpoint_holds_inference_weights_and_every_loader_takes_them(tmp_path, one_torch_thread):
    trainer = train(tmp_path / "run", 3)
    folder = latest_checkpoint(tmp_path / "run")
    inference, trained = (read_weights(folder / name)[0] for name in (INFERENCE_FILE, GENERATOR_FILE))
    averaged = trainer.average.state_dict()
    assert all(torch.equal(inference[name], value.cpu()) for name, value in averaged.items())
    assert not all(torch.equal(inference[name], trained[name]) for name in averaged)  # not the trained weights
    statistics = [name for name in inference if name.endswith("running_var")]
    assert statistics and not any(torch.equal(inference[name], trained[name]) for name in statistics)
    assert all(int(inference[name]) == 2 for name in inference if name.endswith("num_batches_tracked"))
    assert resolve_generator_file(tmp_path / "run") == resolve_generator_file(folder) == folder / INFERENCE_FILE
    loaded = i2i.load(tmp_path / "run", device="cpu").generator.state_dict()
    assert all(torch.equal(loaded[name], inference[name]) for name in inference)
    again = trainer.inference_generator().state_dict()  # deterministic: the same statistics every time
    assert all(torch.equal(again[name].cpu(), inference[name]) for name in inference)


def test_without_average_or_recomputed_statistics_a_checkpoint_is_as_before(tmp_path, one_torch_thread):
    train(tmp_path / "run", 1, ema=None, eval_bn_batches=0)
    folder = latest_checkpoint(tmp_path / "run")
    assert not (folder / INFERENCE_FILE).exists() and resolve_generator_file(tmp_path / "run") == folder / GENERATOR_FILE


def test_resume_with_an_average_equals_a_straight_run(tmp_path, one_torch_thread):
    straight = train(tmp_path / "straight", 7)
    train(tmp_path / "split", 3)
    resumed = train(tmp_path / "split", 7, resume=True)
    for a, b in ((straight.generator, resumed.generator), (straight.discriminator, resumed.discriminator)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert all(torch.equal(straight.average.state_dict()[k], v) for k, v in resumed.average.state_dict().items())
    files = [read_weights(latest_checkpoint(tmp_path / run) / INFERENCE_FILE)[0] for run in ("straight", "split")]
    assert all(torch.equal(files[0][name], files[1][name]) for name in files[0])


def test_an_average_turned_on_at_a_resume_starts_from_the_resumed_weights(tmp_path, one_torch_thread):
    train(tmp_path / "run", 2, ema=None, eval_bn_batches=0)
    lines = []
    recipe = tiny_recipe(train={"batch_size": 2, "max_steps": 2, "ema": {"decay": 0.9}, "tensorboard": False})
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path / "run")
    trainer.log_line = lines.append
    trainer.resume()
    assert any("holds no average; it starts from the resumed weights" in line for line in lines)
    assert all(torch.equal(trainer.average.state_dict()[name], p) for name, p in trainer.generator.named_parameters())
