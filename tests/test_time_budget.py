"""train.time_budget: parsed at validation, stops a run at a step boundary with a checkpoint
(exit 0), and fits the lr schedule to the steps it allows, resumably."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from i2i.cli import app
from i2i.engine import budget
from i2i.engine.checkpoint import latest_checkpoint
from i2i.engine.distributed import leave
from i2i.engine.inference import INFERENCE_FILE, resolve_generator_file
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, RecipeError, parse_duration

from conftest import tiny_recipe
from test_resume import assert_same_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("text, seconds", [
    ("15m", 900), ("2h", 7200), ("90s", 90), ("1h30m", 5400), ("1h 30m 15s", 5415), ("1.5h", 5400),
    ("0.5s", 0.5), (90, 90), (2.5, 2.5), ("600", 600),
])
def test_durations_parse_to_seconds(text, seconds):
    assert parse_duration(text) == seconds
    assert Recipe.from_dict(tiny_recipe(train={"time_budget": text})).train.time_budget == seconds


@pytest.mark.parametrize("value", [0, -5, "0m", "-1h", "soon", "15x", "m", "", float("inf"), True])
def test_a_bad_budget_is_one_line_naming_the_field_and_value(value):
    with pytest.raises(RecipeError) as caught:
        Recipe.from_dict(tiny_recipe(train={"time_budget": value}))
    (problem,) = caught.value.problems
    assert problem.startswith("train.time_budget: ") and repr(value)[:10] in problem, problem


def test_fit_needs_a_budget():
    with pytest.raises(RecipeError, match="budget_schedule fit needs a train.time_budget"):
        Recipe.from_dict(tiny_recipe(train={"budget_schedule": "fit"}))


def test_cli_set_time_budget_validates_and_runs(write_recipe, tmp_path):
    path = write_recipe(tiny_recipe(train={"max_steps": 2, "tensorboard": False}))
    assert CliRunner().invoke(app, ["validate", str(path), "--set", "train.time_budget=15m"]).exit_code == 0
    bad = CliRunner().invoke(app, ["validate", str(path), "--set", "train.time_budget=15x"])
    assert bad.exit_code != 0 and "train.time_budget" in str(bad.exception) and "'15x'" in str(bad.exception)
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--set", "train.time_budget=15m"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["time_budget"] == 900
    assert latest_checkpoint(out).name == "step_00000002"  # max_steps came first


def long_recipe(**train) -> dict:
    """Thousands of steps by the schedule: only the budget ends these runs."""
    return tiny_recipe(train={"epochs": 500, "epochs_decay": 500, "tensorboard": False, "checkpoint_each_epoch": False,
                              **train})


def log_records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_a_spent_budget_stops_with_a_checkpoint_and_exit_0(write_recipe, tmp_path):
    path = write_recipe(long_recipe(time_budget=1.5, ema={"decay": 0.9, "every": 1}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--no-tensorboard"])
    assert result.exit_code == 0, result.output
    stop = log_records(out)[-1]
    steps = stop["step"]
    assert 1 < steps < 8000 and stop["time_budget"]["stopped"] and stop["time_budget"]["budget_s"] == 1.5
    assert stop["time_budget"]["loop_s"] >= 1.5 and stop["time_budget"]["setup_s"] > 0
    assert f"train.time_budget 1.5 s spent: stopped at step {steps} of 8000" in result.output
    assert "not counted" in result.output and "time budget spent" in result.output
    checkpoint = latest_checkpoint(out)
    assert checkpoint.name == f"step_{steps:08d}"
    assert resolve_generator_file(out) == checkpoint / INFERENCE_FILE  # what translate takes, as after a normal end


def test_a_budget_shorter_than_a_step_still_saves_that_step(tmp_path, capsys):
    trainer = Trainer(Recipe.from_dict(long_recipe(time_budget=1e-6)), run_dir=tmp_path)
    trainer.fit()
    assert trainer.step == 1 and latest_checkpoint(tmp_path).name == "step_00000001"
    assert "the budget was shorter than the first step" in capsys.readouterr().out


def test_fit_decays_the_lr_within_the_budget(tmp_path, capsys, monkeypatch):
    # 8 steps an epoch; the recipe's own schedule would keep the initial rate for 1000 epochs. The
    # estimate and the clock are fixed (a loaded machine would otherwise spend 5 s before the fit).
    monkeypatch.setattr(budget, "WARMUP_STEPS", 2)
    monkeypatch.setattr(budget, "MEASURED_STEPS", 2)
    monkeypatch.setattr(budget.TimeBudget, "estimated_steps", lambda self, step, rate: 40)
    recipe = long_recipe(epochs=1000, epochs_decay=3000, time_budget="1h", budget_schedule="fit", log_every=4)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path)
    trainer.budget.elapsed = lambda: 1e9 if trainer.step >= 40 else 0.0
    trainer.fit()
    records = log_records(tmp_path)
    (fit,) = [r["time_budget"] for r in records if "estimated_steps" in r.get("time_budget", {})]
    assert trainer.fitted == fit["fitted_steps"] == fit["estimated_steps"] == 40 < 8 * 4000
    assert trainer.step == 40
    assert "train.budget_schedule fit:" in capsys.readouterr().out
    lrs = [r["lr"] for r in records if "lr" in r]
    assert lrs[0] == 2e-4 and lrs[-1] < 2e-4 * 0.75, "the rate decays before the budget is spent"
    assert all(later <= earlier for earlier, later in zip(lrs, lrs[1:]))


def test_fit_is_refined_until_the_decay_begins_then_kept(tmp_path, capsys, monkeypatch):
    # The first 2 timed steps estimate 40 steps; the rate over more of them says 100 (a machine
    # that sped up after the warm-up). The decay begins at a quarter of the fitted steps.
    monkeypatch.setattr(budget, "WARMUP_STEPS", 2)
    monkeypatch.setattr(budget, "MEASURED_STEPS", 2)
    monkeypatch.setattr(budget, "REFINE_EVERY", 4)
    monkeypatch.setattr(budget.TimeBudget, "estimated_steps", lambda self, step, rate: 40 if step < 8 else 100)
    recipe = long_recipe(epochs=1000, epochs_decay=3000, time_budget="1h", budget_schedule="fit", log_every=4)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path)
    trainer.budget.elapsed = lambda: 1e9 if trainer.step >= 100 else 0.0
    trainer.fit()
    fits = [(r["step"], r["time_budget"]["fitted_steps"]) for r in log_records(tmp_path)
            if "fitted_steps" in r.get("time_budget", {})]
    # fits at steps 4 and 8 (40, then 100), the same 100 at 12 to 24; at 28 the decay (from 25) has begun
    assert fits == [(4, 40), (8, 100)]
    assert trainer.fitted == trainer.step == 100 and trainer.fit_kept
    assert "the decay began by step 28; the schedule stays fitted into 100 steps" in capsys.readouterr().out


def test_the_rate_is_read_after_the_warm_up_then_over_all_the_timed_steps(monkeypatch):
    monkeypatch.setattr(budget, "WARMUP_STEPS", 2)
    monkeypatch.setattr(budget, "MEASURED_STEPS", 4)
    monkeypatch.setattr(budget, "REFINE_EVERY", 3)
    clock = budget.TimeBudget(60, torch.device("cpu"), 1)
    clock.start(step=10)
    clock.device_time = lambda: now
    rates = {}
    for step in range(10, 24):
        now = step if step <= 16 else 16 + (step - 16) / 2  # twice as fast from step 16
        rates[step] = clock.measured_rate(step)
    # timed from step 12: 4 steps in 4 s at step 16, then 7 in 5.5 s at 19 and 10 in 7 s at 22
    assert {step: rate for step, rate in rates.items() if rate is not None} == pytest.approx({16: 1.0, 19: 7 / 5.5,
                                                                                              22: 10 / 7})


def test_resume_after_a_budget_stop_keeps_the_fitted_schedule_and_continues_exactly(tmp_path, monkeypatch):
    """The stop and the rate are made deterministic (a clock that runs out at a set step, a
    fixed estimate); the rest is the real loop."""
    monkeypatch.setattr(budget, "WARMUP_STEPS", 2)
    monkeypatch.setattr(budget, "MEASURED_STEPS", 2)
    monkeypatch.setattr(budget.TimeBudget, "estimated_steps", lambda self, step, rate: 24)  # 3 epochs of the data

    def train(run_dir, stop_at=None, resume=False) -> Trainer:
        recipe = long_recipe(epochs=10, epochs_decay=30, time_budget="1h", budget_schedule="fit")
        trainer = Trainer(Recipe.from_dict(recipe), run_dir=run_dir)
        trainer.budget.elapsed = lambda: 1e9 if stop_at and trainer.step >= stop_at else 0.0
        trainer.fit(resume=resume)
        return trainer

    straight = train(tmp_path / "straight")
    assert straight.fitted == straight.step == 24  # ends by the fitted schedule
    first = train(tmp_path / "split", stop_at=10)
    # 40 schedule epochs in 24 steps: after step 10, epoch 16, the 7th of decay (of 30)
    assert first.step == 10 and first.budget_spent and first.opt_g.param_groups[0]["lr"] == pytest.approx(2e-4 * 24 / 31)
    resumed = train(tmp_path / "split", resume=True)
    assert resumed.fitted == resumed.step == 24
    assert_same_weights(straight.generator, resumed.generator)
    assert_same_weights(straight.discriminator, resumed.discriminator)


def ranks_stop_together(rank: int, folder) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    budget.WARMUP_STEPS = budget.MEASURED_STEPS = 2  # the fit within the budget on a busy machine
    dist.init_process_group("gloo", init_method=f"file://{folder / 'store'}", rank=rank, world_size=2)
    recipe = Recipe.from_dict(long_recipe(time_budget=3, budget_schedule="fit"))
    trainer = Trainer(recipe, run_dir=folder / "run", rank=rank, world_size=2)
    if rank == 1:  # a clock that would stop at once: only rank 0's may count
        trainer.budget.elapsed = lambda: 1e9
    trainer.fit()
    (folder / f"rank{rank}.json").write_text(json.dumps({"step": trainer.step, "fitted": trainer.fitted}))
    del trainer
    leave()


def test_with_two_processes_rank_0_decides_the_stop_and_the_fit(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(ranks_stop_together, args=(tmp_path,), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1] and ranks[0]["step"] > 4 and ranks[0]["fitted"]
    assert latest_checkpoint(tmp_path / "run").name == f"step_{ranks[0]['step']:08d}"


@pytest.mark.parametrize("method", ["cyclegan", "cut"])
def test_unpaired_methods_stop_by_budget_on_a_fitted_schedule(method, fake_data_root, tmp_path, monkeypatch):
    from test_unpaired import unpaired_recipe

    monkeypatch.setattr(budget, "WARMUP_STEPS", 2)
    monkeypatch.setattr(budget, "MEASURED_STEPS", 2)
    monkeypatch.setattr(budget.TimeBudget, "estimated_steps", lambda self, step, rate: 1000)  # past the budget
    recipe = unpaired_recipe(method, fake_data_root, epochs=500, epochs_decay=500, time_budget=1.5,
                             budget_schedule="fit", checkpoint_each_epoch=False)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path)
    trainer.fit()
    assert trainer.budget_spent and trainer.fitted == trainer.total_steps == 1000 and 4 < trainer.step < 1000
    assert latest_checkpoint(tmp_path).name == f"step_{trainer.step:08d}"
