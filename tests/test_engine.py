"""The engine's speed settings keep the math: bf16 tracks fp32, the CPU rewrites equal
the layers they replace, torch.compile trains and falls back to eager."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from i2i.engine.autotune import static_settings
from i2i.engine.compiled import CompiledOrEager
from i2i.engine.cpu_speedups import (
    MatmulConv2d,
    MatmulConvTranspose2d,
    use_dense_batchnorm_gradients,
    use_matmul_convolutions,
)
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe


def l1_terms(train: dict, tmp_path, steps: int = 5) -> list[float]:
    """The G_l1 term of each of ``steps`` steps on one batch, from the same initialisation."""
    recipe = Recipe.from_dict(tiny_recipe(train={"batch_size": 2, **train}))
    trainer = Trainer(recipe, run_dir=tmp_path)
    real_a, real_b = (
        torch.stack([trainer.dataset[i][key] for i in range(2)]).to(trainer.device).contiguous(memory_format=trainer.memory_format)
        for key in ("input", "target")
    )
    return [float(trainer.train_step(real_a, real_b)["G_l1"]) for _ in range(steps)]


def test_tuned_cpu_training_tracks_fp32(tmp_path):
    settings = {**static_settings(torch.device("cpu")), "precision": "bf16", "channels_last": True}
    fp32 = l1_terms({"engine": "reference"}, tmp_path / "fp32")
    tuned = l1_terms(settings, tmp_path / "tuned")
    assert fp32[-1] < fp32[0], "the reference run must learn for the comparison to mean something"
    for reference, candidate in zip(fp32, tuned):
        assert abs(candidate - reference) / reference < 0.03


@pytest.mark.parametrize("stride,padding,bias", [(2, 1, False), (1, 1, True), (2, 0, True)])
def test_matmul_convolutions_equal_the_layers_they_replace(stride, padding, bias):
    torch.manual_seed(0)
    for plain in (nn.Conv2d(6, 5, 4, stride, padding, bias=bias), nn.ConvTranspose2d(6, 5, 4, stride, padding, bias=bias)):
        swapped = type(plain)(6, 5, 4, stride, padding, bias=bias)
        swapped.load_state_dict(plain.state_dict())
        swapped.__class__ = MatmulConv2d if isinstance(plain, nn.Conv2d) else MatmulConvTranspose2d
        x = torch.randn(2, 6, 7, 7, requires_grad=True)
        expected, got = plain(x), swapped(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        grad = torch.randn_like(expected)
        expected_grads = torch.autograd.grad(expected, [x, plain.weight], grad)
        got_grads = torch.autograd.grad(got, [x, swapped.weight], grad)
        for e, g in zip(expected_grads, got_grads):
            torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_cpu_speedups_leave_a_unet_step_unchanged():
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    plain = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0))
    fast = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0))
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert use_matmul_convolutions(fast, x) > 0
    assert use_dense_batchnorm_gradients(fast) > 0
    assert fast.state_dict().keys() == plain.state_dict().keys()
    for model in (plain, fast):
        model.to(memory_format=torch.channels_last)
        model(x).square().mean().backward()
    torch.testing.assert_close(fast(x), plain(x), atol=1e-5, rtol=1e-4)
    for (name, p), q in zip(plain.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_dense_batchnorm_gradients_allow_an_inplace_activation_after_the_norm():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    hooked = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True))
    hooked.load_state_dict(plain.state_dict())
    use_dense_batchnorm_gradients(hooked)
    x = torch.randn(2, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    for model in (plain, hooked):
        model.to(memory_format=torch.channels_last)
        model(x)[:, :2].sum().backward()  # a channel slice: the strided gradient the hook densifies
    for p, q in zip(plain.parameters(), hooked.parameters()):
        torch.testing.assert_close(q.grad, p.grad)


def test_compile_falls_back_to_eager_with_a_log_line(monkeypatch):
    lines = []

    def broken_compile(module, mode, dynamic=None):
        def call(*args):
            raise RuntimeError("backend exploded")

        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    layer = nn.Linear(3, 2)
    wrapped = CompiledOrEager(layer, "default", "generator", lines.append)
    x = torch.randn(4, 3)
    torch.testing.assert_close(wrapped(x), layer(x))
    torch.testing.assert_close(wrapped(x), layer(x))
    assert len(lines) == 1 and "generator" in lines[0] and "backend exploded" in lines[0] and "eagerly" in lines[0]


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile of a tiny G and D on the CPU (a cold compile takes tens of seconds)."""
    eager = l1_terms({}, tmp_path / "eager", steps=2)
    compiled = l1_terms({"compile": True}, tmp_path / "compiled", steps=2)
    assert compiled == pytest.approx(eager, rel=1e-3)


@pytest.mark.slow
def test_compiled_training_with_a_gradient_penalty(tmp_path):
    """wgan-gp differentiates D twice: the penalty runs D eagerly, the rest compiled."""
    losses = [{"name": "gan", "params": {"mode": "wgan-gp"}}, {"name": "l1", "weight": 100.0}]
    trainer = Trainer(Recipe.from_dict(tiny_recipe(losses=losses, train={"compile": True})), run_dir=tmp_path)
    real_a, real_b = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    for _ in range(2):
        losses = trainer.train_step(real_a, real_b)
    assert all(torch.isfinite(value) for value in losses.values())
    for name, module in trainer.networks.items():
        assert trainer.method.tools.call[name].call is not module, f"{name}: compilation fell back to eager"


@pytest.mark.parametrize("mode", ["eval", "instance", "train"])
def test_fast_generator_matches_the_fp32_generator(mode):
    from i2i.engine.fast_inference import fast_generator
    from i2i.engine.inference import generator_mode
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    generator = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    run = fast_generator(generator, mode, x, precision="bf16")
    with torch.no_grad(), generator_mode(generator, mode):
        expected = generator(x)
    got = run(x)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=3e-2, rtol=0)
    assert all(p.dtype == torch.float32 for p in generator.parameters()), "the trained generator is left as it was"
    assert not any(isinstance(layer, (MatmulConv2d, MatmulConvTranspose2d)) for layer in generator.modules())


@pytest.mark.parametrize("faster", ["channels_last", "contiguous"])
def test_fast_generator_takes_the_faster_memory_layout(monkeypatch, faster):
    """The layout is timed on the example (channels_last first): the faster one is taken, and
    the output is the generator's in either."""
    import itertools

    import i2i.engine.fast_inference as fast_inference
    from i2i.engine.inference import generator_mode
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    generator = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0))
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    laid_out = {layout: fast_inference.rewritten(generator, x, torch.float32, layout, matmuls=True)[0]
                for layout in (torch.channels_last, torch.contiguous_format)}
    timings = itertools.cycle([1.0, 2.0] if faster == "channels_last" else [2.0, 1.0])
    monkeypatch.setattr(fast_inference, "_seconds", lambda call, repeats=5: next(timings))
    expected_format = torch.channels_last if faster == "channels_last" else torch.contiguous_format
    assert fast_inference.fastest_memory_format(laid_out, x, torch.float32) == expected_format

    timed = {}

    def choose(models, example, dtype):
        timed.update(models)
        return expected_format

    monkeypatch.setattr(fast_inference, "fastest_memory_format", choose)
    run = fast_inference.fast_generator(generator, "instance", x, precision="fp32")
    # each layout is timed as it would run: rewritten, in its layout, the matmul form's weights
    # kept as its product reads them (a channels_last weight would be copied every call)
    assert set(timed) == {torch.channels_last, torch.contiguous_format}
    for layout, model in timed.items():
        matmuls = [layer for layer in model.modules() if isinstance(layer, (MatmulConv2d, MatmulConvTranspose2d))]
        assert matmuls and all(layer.weight.is_contiguous() for layer in matmuls)
        assert any(p.dim() == 4 and p.is_contiguous(memory_format=layout) and not p.is_contiguous()
                   for p in model.parameters()) == (layout == torch.channels_last)
    with torch.no_grad(), generator_mode(generator, "instance"):
        expected = generator(x)
    torch.testing.assert_close(run(x), expected, atol=1e-5, rtol=0)
    # what was chosen is said, for a benchmark's record: the timed layout above all
    assert run.choices.startswith(f"float32, {faster} (timed), ") and "thin convolutions as matmuls" in run.choices


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["eval", "instance", "train"])
def test_compiled_fast_generator_matches_the_generator(mode):
    """Compiled with freezing, both modes: train mode reads batch statistics (no
    dropout here, so the output is a fixed function of the batch)."""
    from i2i.engine.fast_inference import fast_generator
    from i2i.engine.inference import generator_mode
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    generator = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0))
    generator.train()
    for _ in range(3):  # running statistics away from their initial values, so eval and train differ
        generator(torch.rand(2, 3, 32, 32) * 2 - 1)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    state = {key: value.clone() for key, value in generator.state_dict().items()}
    logs = []
    run = fast_generator(generator, mode, x, precision="bf16", compile=True, log_line=logs.append)
    got = run(x)
    assert logs == [], "compilation must not have fallen back to eager"
    for key, value in generator.state_dict().items():
        assert torch.equal(value, state[key]), f"the trained generator is left as it was ({key})"
    with torch.no_grad(), generator_mode(generator, mode):
        expected = generator(x)
    other_mode = "train" if mode == "eval" else "eval"
    with torch.no_grad(), generator_mode(generator, other_mode):
        other = generator(x)
    torch.testing.assert_close(got, expected, atol=3e-2, rtol=0)
    assert (got - other).abs().max() > 0.1, f"the output must follow {mode} mode, not {other_mode}"


@pytest.mark.slow
def test_compiled_train_mode_keeps_dropout_live():
    from i2i.engine.fast_inference import fast_generator
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    x = torch.rand(1, 3, 64, 64) * 2 - 1  # num_downs 6: one 8*ngf decoder block, which has the dropout
    run = fast_generator(UNetGenerator(UNetParams(num_downs=6, ngf=8, dropout=0.5)), "train", x, compile=True)
    assert (run(x) - run(x)).abs().max() > 1e-2, "dropout draws anew on every call"


RESIDENT_AFTER_FREE = """
import sys
from pathlib import Path
import torch
from i2i.engine.cpu_speedups import keep_freed_memory

def resident_mib():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

if sys.argv[1] == "keep":
    assert keep_freed_memory()
before = resident_mib()
block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
del block
print(resident_mib() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from /proc")
def test_keep_freed_memory_reuses_pages_instead_of_returning_them():
    """In a fresh process each, since the setting is process-wide: by default glibc
    unmaps a freed 64 MiB block; after ``keep_freed_memory`` the pages stay mapped
    for the next allocation."""
    kept = {}
    for setting in ("default", "keep"):
        done = subprocess.run([sys.executable, "-c", RESIDENT_AFTER_FREE, setting], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        kept[setting] = float(done.stdout)
    assert kept["default"] < 16, kept
    assert kept["keep"] > 48, kept


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("size", [1, 3, 6])
def test_subpixel_form_equals_the_transposed_convolution(bias, size):
    from i2i.engine.fast_inference import SubpixelConvTranspose2d

    torch.manual_seed(size)
    layer = nn.ConvTranspose2d(8, 5, 4, 2, 1, bias=bias)
    x = torch.randn(2, 8, size, size + 1)
    torch.testing.assert_close(SubpixelConvTranspose2d(layer)(x), layer(x), atol=1e-5, rtol=0)


def test_folded_batchnorm_computes_the_eval_network():
    from i2i.engine.fast_inference import fold_batchnorm

    torch.manual_seed(0)
    network = nn.Sequential(
        nn.Conv2d(3, 6, 4, 2, 1, bias=False), nn.BatchNorm2d(6), nn.LeakyReLU(0.2),
        nn.ConvTranspose2d(6, 4, 4, 2, 1), nn.BatchNorm2d(4), nn.ReLU(),
    )
    network.train()
    for _ in range(3):
        network(torch.randn(4, 3, 16, 16))
    network.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = network(x)
        assert fold_batchnorm(network) == 2
        assert not any(isinstance(layer, nn.BatchNorm2d) for layer in network.modules())
        torch.testing.assert_close(network(x), expected, atol=1e-5, rtol=0)


def test_subpixel_swap_keeps_the_generator_output(monkeypatch):
    import itertools

    import i2i.engine.fast_inference as fast_inference
    from i2i.engine.fast_inference import SubpixelConvTranspose2d, use_subpixel_where_faster
    from i2i.models.unet import UNetGenerator, UNetParams

    # each layer times the subpixel form first, then the plain one: make the subpixel form win
    timings = itertools.cycle([0.0, 1.0])
    monkeypatch.setattr(fast_inference, "_seconds", lambda call: next(timings))
    torch.manual_seed(0)
    generator = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0)).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = generator(x)
        swapped = use_subpixel_where_faster(generator, x, torch.float32)
        got = generator(x)
    assert swapped == 5 == sum(isinstance(layer, SubpixelConvTranspose2d) for layer in generator.modules())
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_training_rewrites_come_off_for_inference():
    """A trainer's generator carries the CPU training rewrites; the compiled inference copy
    needs plain layers (inductor prepacks their weights) and no gradient hooks."""
    from i2i.engine.cpu_speedups import undo_training_rewrites
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    generator = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0)).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        expected = generator(x)
    assert use_matmul_convolutions(generator, x) > 0 and use_dense_batchnorm_gradients(generator) > 0
    undo_training_rewrites(generator)
    assert not any(isinstance(layer, (MatmulConv2d, MatmulConvTranspose2d)) for layer in generator.modules())
    assert not any(layer._forward_hooks for layer in generator.modules())
    with torch.no_grad():
        torch.testing.assert_close(generator(x), expected, atol=1e-5, rtol=0)


# --------------------------------------------------------------- CUDA (benchmarks/gpu_check.sh runs these)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_low_precision_training_tracks_fp32(tmp_path, precision):
    fp32 = l1_terms({"engine": "reference", "device": "cuda"}, tmp_path / "fp32")
    fast = l1_terms({"device": "cuda", "precision": precision, "channels_last": True, "fused_adam": True,
                     "compile": False}, tmp_path / precision)
    assert fp32[-1] < fp32[0]
    for reference, candidate in zip(fp32, fast):
        assert abs(candidate - reference) / reference < 0.03


@cuda
@pytest.mark.slow
def test_cuda_compiled_training_matches_eager(tmp_path):
    eager = l1_terms({"device": "cuda", "compile": False}, tmp_path / "eager", steps=3)
    compiled = l1_terms({"device": "cuda", "compile": True}, tmp_path / "compiled", steps=3)
    assert compiled == pytest.approx(eager, rel=1e-2)


@cuda
def test_cuda_engine_probe_times_chooses_and_caches(tmp_path, monkeypatch):
    from i2i.engine import autotune

    monkeypatch.setenv("I2I_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("I2I_ENGINE_PROBE", raising=False)
    # long enough a run for a budget that times bf16 and channels_last, too short for a compile (never trained)
    recipe = Recipe.from_dict(tiny_recipe(train={"device": "cuda", "epochs": 2500, "epochs_decay": 0,  # 20,000 steps
                                                 "engine_probe": True}))
    first = Trainer(recipe, run_dir=tmp_path / "first")
    assert first.engine.source == "measured" and first.engine.cache_file.is_file()
    assert first.engine.comparisons, "the probe timed at least one alternative"
    monkeypatch.setattr(autotune, "clock", lambda: pytest.fail("a cached choice must not time anything"))
    assert Trainer(recipe, run_dir=tmp_path / "second").engine.settings == first.engine.settings


@cuda
@pytest.mark.parametrize("mode", ["eval", "instance", "train"])
def test_cuda_fast_generator_matches_the_fp32_generator(mode):
    from i2i.engine.fast_inference import fast_generator
    from i2i.engine.inference import generator_mode
    from i2i.models.unet import UNetGenerator, UNetParams

    torch.manual_seed(0)
    generator = UNetGenerator(UNetParams(num_downs=5, ngf=8, dropout=0.0)).cuda()
    x = torch.rand(2, 3, 32, 32, device="cuda") * 2 - 1
    run = fast_generator(generator, mode, x, precision="bf16")
    with torch.no_grad(), generator_mode(generator, mode):
        expected = generator(x)
    torch.testing.assert_close(run(x), expected, atol=3e-2, rtol=0)


@cuda
def test_cuda_graphed_step_trains_as_the_eager_step_and_follows_the_learning_rate(tmp_path):
    from i2i.engine.compiled import GraphedStep

    def run(cuda_graph: bool) -> list[float]:
        recipe = tiny_recipe(train={"batch_size": 2, "device": "cuda", "cuda_graph": cuda_graph, "precision": "fp32",
                                    "channels_last": True, "fused_adam": True, "compile": False,
                                    "epochs": 1, "epochs_decay": 3})
        recipe["model"]["generator"]["params"]["dropout"] = 0.0  # the same math, without random draws to line up
        trainer = Trainer(Recipe.from_dict(recipe), run_dir=tmp_path / str(cuda_graph))
        real_a, real_b = (torch.stack([trainer.dataset[i][key] for i in range(2)]).cuda()
                          .contiguous(memory_format=trainer.memory_format) for key in ("input", "target"))
        found = []
        for step in range(8):
            if step == 6:
                trainer.set_epoch(3)  # a quarter of the learning rate from here
            found.append(float(trainer.train_step(real_a, real_b)["G_l1"]))
        if cuda_graph:
            assert isinstance(trainer.train_step, GraphedStep) and trainer.train_step.graph is not None
        short = trainer.train_step(real_a[:1], real_b[:1])  # another shape: eagerly
        assert all(torch.isfinite(value) for value in short.values())
        return found

    assert run(True) == pytest.approx(run(False), rel=1e-3)
