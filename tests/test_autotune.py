"""The engine probe: timed once per machine and recipe shape, cached, reused without timing."""

import contextlib
import json

import pytest
import torch

from i2i.engine import autotune
from i2i.engine.autotune import REFERENCE, choose_engine
from i2i.recipe import Recipe

from conftest import tiny_recipe

CPU = torch.device("cpu")


class FakeClock:
    """Each step advances it by the step's cost: timings without timing."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def recipe(crop_size: int = 32, **train) -> Recipe:
    train = {"engine_probe": True, **train}  # whatever the shared tiny recipe says
    return Recipe.from_dict(tiny_recipe(data={"crop_size": crop_size, "load_size": crop_size}, train=train))


def choose(recipe: Recipe, make_step, planned_steps: int = 1000):
    return choose_engine(recipe, CPU, (3, 3), make_step, planned_steps)


@pytest.fixture
def clock(monkeypatch, tmp_path):
    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("I2I_ENGINE_PROBE", raising=False)
    fake = FakeClock()
    monkeypatch.setattr(autotune, "clock", fake)
    return fake


def steps_costing(clock: FakeClock, cost, built: list):
    """``make_step`` whose steps take ``cost(settings)`` seconds; records what was built."""

    def make_step(settings):
        built.append(settings)
        return lambda: setattr(clock, "now", clock.now + cost(settings))

    return make_step


def test_the_probe_caches_its_choice_and_the_next_run_reuses_it_without_timing(clock, monkeypatch, tmp_path):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    built = []
    choice = choose(recipe(), steps_costing(clock, lambda s: 1.0 if s["precision"] == "bf16" else 2.0, built))
    assert choice.source == "measured" and choice.settings["precision"] == "bf16"
    assert choice.reasons["precision"] == "measured 2.00x the speed of precision fp32 on this CPU"
    assert {s["precision"] for s in built} == {"bf16", "fp32"}
    (cached,) = (tmp_path / "cache" / "engine").glob("*.json")
    assert choice.cache_file == cached and json.loads(cached.read_text())["settings"] == choice.settings

    def no_timing(*args):
        raise AssertionError("a cached choice must not time anything")

    monkeypatch.setattr(autotune, "clock", no_timing)
    again = choose(recipe(), no_timing)
    assert again.source == "cached" and again.settings == choice.settings and again.reasons == choice.reasons


def test_a_changed_recipe_shape_probes_again(clock):
    built = []
    choose(recipe(32), steps_costing(clock, lambda s: 1.0, built))
    probed = len(built)
    assert choose(recipe(32), steps_costing(clock, lambda s: 1.0, built)).source == "cached"
    assert choose(recipe(48), steps_costing(clock, lambda s: 1.0, built)).source == "measured"
    assert len(built) == 2 * probed


def test_bf16_measured_slower_selects_fp32(clock, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    choice = choose(recipe(), steps_costing(clock, lambda s: 3.0 if s["precision"] == "bf16" else 1.0, []))
    assert choice.settings["precision"] == "fp32"
    assert choice.reasons["precision"] == "measured 3.00x the speed of precision bf16 on this CPU"


def test_a_cpu_without_bf16_hardware_stays_on_fp32_untimed(clock, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    built = []
    choice = choose(recipe(), steps_costing(clock, lambda s: 1.0, built))
    assert choice.settings["precision"] == "fp32" and all(s["precision"] == "fp32" for s in built)


def test_a_faster_variant_replaces_the_static_choice_and_a_tie_keeps_it(clock, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    cost = lambda s: (0.5 if s["channels_last"] else 1.0) * (1.0 if s["cpu_speedups"] else 0.98)
    choice = choose(recipe(), steps_costing(clock, cost, []))
    assert choice.settings["channels_last"] is True and choice.settings["cpu_speedups"] is True
    assert "within the 5% margin kept for noise" in choice.reasons["cpu_speedups"]


def test_explicit_settings_win_and_are_not_probed(clock, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: True)
    built = []
    choice = choose(recipe(precision="fp32", channels_last=False), steps_costing(clock, lambda s: 1.0, built))
    assert choice.settings["precision"] == "fp32" and choice.settings["channels_last"] is False
    assert all(s["precision"] == "fp32" and s["channels_last"] is False for s in built)
    assert choice.reasons["precision"] == "set in the recipe"


def test_the_reference_engine_is_the_published_step_untimed(clock):
    def no_probe(settings):
        raise AssertionError("the reference engine is not probed")

    choice = choose(recipe(engine="reference"), no_probe)
    assert choice.settings == REFERENCE and choice.source == "reference"
    assert choose(recipe(engine="reference", fused_adam=True), no_probe).settings == {
        **REFERENCE, "fused_adam": True}


@pytest.mark.parametrize("skip", ["recipe", "env"])
def test_a_skipped_probe_takes_the_static_choice(clock, monkeypatch, skip):
    if skip == "env":
        monkeypatch.setenv("I2I_ENGINE_PROBE", "0")

    def no_probe(settings):
        raise AssertionError("the probe is off")

    choice = choose(recipe(engine_probe=skip != "recipe"), no_probe)
    assert choice.source == "static" and choice.settings == autotune.static_settings(CPU)
    assert choice.settings["precision"] == ("bf16" if autotune.native_bf16(CPU) else "fp32")


def test_a_probe_cut_by_its_budget_is_redone_for_a_longer_run(clock, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    built = []
    slow_build = steps_costing(clock, lambda s: 1.0, built)

    def make_step(settings):  # building a trainer costs 500 steps: over 10% of a 1,000-step run
        clock.now += 500.0
        return slow_build(settings)

    first = choose(recipe(), make_step)
    assert first.source == "measured" and len(built) == 1
    assert choose(recipe(), make_step).source == "cached"
    assert choose(recipe(), make_step, 100_000).source == "measured"
    assert len(built) > 2


def test_a_run_probes_once_and_the_next_run_reuses_the_cache_with_the_same_training(tmp_path, monkeypatch, one_torch_thread):
    from i2i.engine.trainer import Trainer

    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("I2I_ENGINE_PROBE", raising=False)
    recipe = Recipe.from_dict(tiny_recipe(train={"max_steps": 2, "tensorboard": False, "engine_probe": True}))
    first = Trainer(recipe, run_dir=tmp_path / "first")
    assert first.engine.source == "measured" and first.engine.cache_file.is_file()

    def no_timing(*args):
        raise AssertionError("a cached choice must not time anything")

    monkeypatch.setattr(autotune, "clock", no_timing)
    second = Trainer(recipe, run_dir=tmp_path / "second")
    assert second.engine.source == "cached" and second.engine.settings == first.engine.settings
    first.fit()
    second.fit()  # the probe left the run's random stream alone: both train to the same weights
    for (name, trained), again in zip(first.generator.state_dict().items(), second.generator.state_dict().values()):
        assert torch.equal(trained, again), name


def test_the_reference_engine_trains_as_the_published_step(tmp_path):
    from i2i.engine.cpu_speedups import MatmulConv2d
    from i2i.engine.trainer import Trainer

    trainer = Trainer(Recipe.from_dict(tiny_recipe(train={"engine": "reference"})), run_dir=tmp_path)
    assert trainer.amp_dtype == torch.float32 and trainer.memory_format == torch.contiguous_format
    assert trainer.opt_g.defaults["foreach"] and not trainer.opt_g.defaults["fused"]
    assert not any(isinstance(layer, MatmulConv2d) for layer in trainer.generator.modules())
    assert trainer.method.tools.call["generator"] is trainer.generator  # eager: no compile wrapper


def test_compile_is_kept_only_for_runs_long_enough_to_repay_compiling(clock, monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    monkeypatch.setattr(autotune, "synchronize", lambda device: None)
    monkeypatch.setattr(autotune, "device_name", lambda device: "a GPU")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.random, "fork_rng", lambda devices: contextlib.nullcontext())
    compiled = steps_costing(clock, lambda s: 0.5 if s["compile"] else 1.0, [])

    def make_step(settings):  # compiling takes 100 s, at the first step
        step, first = compiled(settings), [settings["compile"]]

        def run():
            if first.pop() if first else False:
                clock.now += 100.0
            step()

        return run

    long_run = choose_engine(recipe(), cuda, (3, 3), make_step, 100_000)
    assert long_run.settings["compile"] is True
    assert long_run.reasons["compile"] == "measured 2.00x the speed of compile false on this GPU"
    short_run = choose_engine(recipe(), cuda, (3, 3), make_step, 150)  # saves 75 s: less than the compile
    assert short_run.source == "cached" and short_run.settings["compile"] is False
    assert "costs more than they save over 150 steps" in short_run.reasons["compile"]


def test_a_candidate_that_fails_is_left_out_with_its_error(clock, monkeypatch):
    monkeypatch.setattr(autotune, "native_bf16", lambda device: False)
    working = steps_costing(clock, lambda s: 1.0, [])

    def make_step(settings):
        if settings["channels_last"]:
            raise RuntimeError("no kernel for this layout\nmore detail")
        return working(settings)

    choice = choose(recipe(), make_step)
    assert choice.settings["channels_last"] is False
    assert choice.reasons["channels_last"] == "channels_last true failed on this CPU (RuntimeError: no kernel for this layout)"
