"""The training components after pix2pix: two time-scales (TTUR), the R1 penalty, feature
matching, DiffAugment and the reconstruction-weight decay: their maths on tiny tensors, their
recipe errors, and tiny runs with all of them on (which resume exactly)."""

from __future__ import annotations

import signal

import pytest
import torch
from torch import nn

from i2i.engine.callbacks import Callback
from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe, RecipeError
from i2i.registry import LOSSES

from conftest import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def refused(match: str, **sections) -> None:
    with pytest.raises(RecipeError, match=match):
        Recipe.from_dict(tiny_recipe(**sections))


# -- two time-scales ----------------------------------------------------------------
def test_the_discriminator_learns_at_lr_times_the_ratio_all_through_the_schedule(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(train={"epochs": 1, "epochs_decay": 2, "lr": 1e-3, "d_lr_ratio": 4.0,
                                                 "engine": "reference"}))
    trainer = Trainer(recipe, run_dir=tmp_path)
    assert [g["lr"] for g in trainer.opt_d.param_groups] == [4e-3]
    for epoch, factor in ((0, 1.0), (1, 1 - 1 / 3), (2, 1 - 2 / 3)):
        trainer.set_epoch(epoch)
        assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(1e-3 * factor)
        assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(4e-3 * factor)


@pytest.mark.parametrize("ratio,message", [
    (0, r"train.d_lr_ratio: Input should be greater than 0 \(got 0\)"),
    (-1.5, r"train.d_lr_ratio: Input should be greater than 0"),
    (".inf", r"train.d_lr_ratio: Input should be a finite number"),
    (1e5, r"train: Value error, lr x d_lr_ratio = 20: the discriminator's learning rate is at most 1"),
])
def test_a_bad_lr_ratio_is_one_line(ratio, message):
    import yaml

    refused(message, train={"d_lr_ratio": yaml.safe_load(str(ratio))})


# -- R1 -------------------------------------------------------------------------------
class LinearCritic(nn.Module):
    """Logits = a 1x1 conv of the input, at ``scales`` scales (the same weights each, on the
    input average-pooled 0, 1, ... times): each sample's mean logit has the gradient w_c / HW."""

    def __init__(self, weights: list[float], scales: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(len(weights), 1, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor(weights).view(1, -1, 1, 1))
        self.scales = scales

    def forward(self, x):
        maps = [self.conv(nn.functional.avg_pool2d(x, 2**i)) for i in range(self.scales)]
        return maps if self.scales > 1 else maps[0]


@pytest.mark.parametrize("scales", [1, 2])
def test_r1_is_gamma_over_two_times_the_squared_gradient_norm(scales):
    weights, side, gamma = [0.5, -2.0, 1.0], 4, 3.0
    real = torch.randn(2, 3, side, side)
    penalty = LOSSES.build("gan", {"r1_gamma": gamma}).gradient_penalty(LinearCritic(weights, scales), real, -real)
    # d mean_hw(w . x) / dx = w / HW at every pixel, so |grad|^2 = |w|^2 / HW per sample; average
    # pooling leaves the mean, so every scale has the same gradient.
    assert penalty.item() == pytest.approx(gamma / 2 * sum(w * w for w in weights) / side**2, rel=1e-6)


def test_r1_trains_the_discriminator_and_runs_in_float32_under_autocast():
    critic = LinearCritic([0.5, -2.0, 1.0])
    loss = LOSSES.build("gan", {"r1_gamma": 2.0})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        penalty = loss.gradient_penalty(critic, torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4))
    assert penalty.dtype == torch.float32 and penalty.item() == pytest.approx(5.25 / 16, rel=1e-6)
    penalty.backward()  # d/dw of gamma/2 |w|^2 / HW
    assert torch.allclose(critic.conv.weight.grad.flatten(), 2.0 * torch.tensor([0.5, -2.0, 1.0]) / 16)


def test_r1_is_off_by_default_and_adds_to_wgan_gp():
    critic, real, fake = LinearCritic([1.0, 1.0, 1.0]), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert LOSSES.build("gan", {}).gradient_penalty(critic, real, fake) is None
    torch.manual_seed(0)
    wgan = LOSSES.build("gan", {"mode": "wgan-gp"}).gradient_penalty(critic, real, fake)
    torch.manual_seed(0)
    both = LOSSES.build("gan", {"mode": "wgan-gp", "r1_gamma": 1.0}).gradient_penalty(critic, real, fake)
    assert both.item() == pytest.approx(wgan.item() + 0.5 * 3 / 16, rel=1e-6)


@pytest.mark.parametrize("gamma,message", [(-1, "greater than or equal to 0"), (".nan", "finite number")])
def test_a_bad_r1_gamma_is_one_line(gamma, message):
    import yaml

    refused(rf"losses.0.params.r1_gamma: Input should be (a )?{message}",
            losses=[{"name": "gan", "params": {"r1_gamma": yaml.safe_load(gamma) if isinstance(gamma, str) else gamma}},
                    {"name": "l1", "weight": 100.0}])


@pytest.mark.parametrize("method,discriminators", [
    ({"name": "cyclegan", "params": {"pool_size": 2}}, ["discriminator", "discriminator_a"]),
    ({"name": "cut", "params": {"nce_layers": [0, 4], "num_patches": 8, "head_channels": 4}}, ["discriminator"]),
])
def test_every_method_adds_the_penalty_of_each_discriminator(method, discriminators, fake_data_root, tmp_path, monkeypatch):
    from i2i.losses import GANLoss

    seen = []
    r1 = GANLoss._r1
    monkeypatch.setattr(GANLoss, "_r1", lambda self, d, real: seen.append(d) or r1(self, d, real))
    recipe = Recipe.from_dict(tiny_recipe(
        method=method,
        model={"generator": {"name": "resnet", "params": {"ngf": 4, "n_blocks": 1, "antialias": method["name"] == "cut"}},
               "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}}},
        losses=[{"name": "gan", "params": {"mode": "lsgan", "r1_gamma": 1.0}}],
        data={"dataset": {"name": "unaligned"}, "root": str(fake_data_root)},
        train={"max_steps": 1, "tensorboard": False},
    ))
    trainer = Trainer(recipe, run_dir=tmp_path)
    trainer.fit()
    assert seen == [trainer.networks[name] for name in discriminators]


# -- feature matching ---------------------------------------------------------------------
def test_feature_matching_weighs_layers_and_scales_as_pix2pixhd():
    from i2i.methods.pix2pix import feature_matching_loss

    def maps(*values):
        return [torch.full((1, 2, 3, 3), float(v)) for v in values]

    # scale 0: two feature layers, L1 distances 1 and 2; scale 1: three layers, 3, 0 and 1.
    # The logits (last) are not matched: their distance, 100, must not count.
    fake = [maps(1, 2, 100), maps(3, 0, 1, 100)]
    fake = [[f.requires_grad_(True) for f in scale] for scale in fake]
    real = [maps(0, 0, 0), [t.requires_grad_(True) for t in maps(0, 0, 0, 0)]]
    loss = feature_matching_loss(fake, real)
    assert loss.item() == pytest.approx(4 / 2 / 2 * (1 + 2) + 4 / 3 / 2 * (3 + 0 + 1))
    loss.backward()
    assert fake[0][0].grad is not None and fake[0][-1].grad is None
    assert all(t.grad is None for t in real[1]), "the real features are constants"


@pytest.mark.parametrize("name,params", [("patchgan", {"ndf": 4, "n_layers": 2}),
                                         ("multiscale", {"ndf": 4, "n_layers": 2, "num_scales": 2})])
def test_patchgan_features_are_each_leaky_relu_then_the_logits(name, params):
    from i2i.registry import DISCRIMINATORS

    d = DISCRIMINATORS.build(name, params, in_channels=6)
    activations = []
    for layer in d.modules():
        if isinstance(layer, nn.LeakyReLU):
            layer.register_forward_hook(lambda module, args, output: activations.append(output))
    pair = torch.randn(1, 6, 32, 32)
    logits = d(pair)
    logits = logits if isinstance(logits, list) else [logits]
    features = d.forward_features(pair)
    assert len(features) == len(logits)
    for layers, scale_logits in zip(features, logits):
        assert len(layers) == params["n_layers"] + 2  # the first conv, each block, the logits
        assert torch.equal(layers[-1], scale_logits)
    matched = [f for layers in features for f in layers[:-1]]
    assert len(activations) == 2 * len(matched)  # forward, then forward_features
    assert all(torch.equal(a, f) for a, f in zip(activations, matched))


# -- DiffAugment ----------------------------------------------------------------------------
def augment(pairs, policy, image_channels=3):
    from i2i.methods.augment import diff_augment

    return diff_augment(pairs, policy, image_channels)


@pytest.mark.parametrize("policy", [["color"], ["translation"], ["cutout"], ["color", "translation", "cutout"]])
def test_diff_augment_keeps_shapes_moves_pairs_together_and_passes_gradients(policy):
    image = torch.rand(4, 3, 16, 16) * 2 - 1
    pair = torch.cat([image, image], 1).requires_grad_(True)  # condition = image, to see they move together
    torch.manual_seed(1)
    out, again = augment([pair, pair.detach().clone()], policy)
    assert out.shape == pair.shape and torch.equal(out.detach(), again), "one draw for every tensor of a call"
    condition, augmented = out[:, :3], out[:, 3:]
    if policy == ["color"]:
        assert torch.equal(condition, image) and not torch.equal(augmented, image), "colour: the image only"
    else:
        assert not torch.equal(out.detach(), pair.detach())
        if "color" not in policy:
            assert torch.equal(condition, augmented), "the condition moves with its image"
    (out * torch.randn_like(out)).sum().backward()
    assert pair.grad is not None and pair.grad.abs().sum() > 0


def test_diff_augment_draws_from_torchs_rng_per_sample():
    pair = torch.randn(1, 6, 16, 16).repeat(8, 1, 1, 1)  # one sample eight times
    policy = ["color", "translation", "cutout"]
    torch.manual_seed(3)
    first = augment([pair], policy)[0]
    torch.manual_seed(3)
    assert torch.equal(augment([pair], policy)[0], first), "seeded: the same draws"
    assert not torch.equal(augment([pair], policy)[0], first), "the RNG moved on"
    assert all(not torch.equal(first[0], other) for other in first[1:]), "each sample its own draw"


def test_translation_shifts_whole_pixels_by_at_most_an_eighth_with_zeros():
    side = 16  # shifts of at most 2 pixels
    grid = torch.arange(1, side * side + 1, dtype=torch.float32).view(1, 1, side, side).repeat(32, 1, 1, 1)
    torch.manual_seed(0)
    out = augment([grid], ["translation"], image_channels=1)[0]
    shifts = set()
    for sample in out:
        (dy, dx), = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                     if torch.equal(sample[0], shifted(grid[0, 0], dy, dx))]
        shifts.add((dy, dx))
    assert len(shifts) > 5  # 32 draws over 25 shifts


def shifted(image, dy, dx):
    out = torch.zeros_like(image)
    h, w = image.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_cutout_zeroes_one_square_of_half_the_side_at_most():
    torch.manual_seed(0)
    out = augment([torch.ones(32, 2, 16, 16)], ["cutout"], image_channels=1)[0]
    assert torch.equal(out[:, 0], out[:, 1]), "every channel of the pair alike"
    for sample in out[:, 0]:
        rows, cols = (sample == 0).any(1).nonzero().flatten(), (sample == 0).any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        assert len(rows) == rows.max() - rows.min() + 1 and len(cols) == cols.max() - cols.min() + 1
        assert (sample == 0).sum() == len(rows) * len(cols), "a rectangle"


# -- the pix2pix params ------------------------------------------------------------------------
ALL_ON = {"feature_matching": 10.0, "diff_augment": ["color", "translation", "cutout"], "reconstruction_decay_to": 0.1}


class RecordScale(Callback):
    def __init__(self):
        self.scales = []

    def on_step(self, trainer):
        self.scales.append(trainer.method.reconstruction_scale.item())


class StopAt(Callback):
    """As a SIGTERM at the end of step ``step``: save and stop."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, trainer):
        if trainer.step == self.step:
            trainer.stop.requested = signal.SIGTERM


def test_reconstruction_weights_decay_linearly_over_the_run(tmp_path):
    recipe = Recipe.from_dict(tiny_recipe(method={"name": "pix2pix", "params": {"reconstruction_decay_to": 0.1}},
                                          train={"max_steps": 5, "tensorboard": False, "engine": "reference"}))
    trainer = Trainer(recipe, run_dir=tmp_path)
    record = RecordScale()
    trainer.callbacks.append(record)
    trainer.fit()
    assert record.scales == pytest.approx([1 - 0.9 * s / 5 for s in range(5)])
    batch = (torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    trainer.method.set_progress(5, 5)  # past the end: weight x 0.1
    assert trainer.method.reconstruction_scale.item() == pytest.approx(0.1)
    assert trainer.method.train_step(*batch)["G_l1"].item() > 0
    trainer.method.reconstruction_scale.fill_(0.0)
    assert trainer.method.train_step(*batch)["G_l1"].item() == 0, "the step reads the scale"


@pytest.mark.parametrize("params,message", [
    ({"feature_matching": -1}, r"method.params.feature_matching: Input should be greater than or equal to 0 \(got -1\)"),
    ({"feature_matching": float("inf")}, r"method.params.feature_matching: Input should be a finite number"),
    ({"diff_augment": ["colour"]}, r"method.params.diff_augment.0: Input should be 'color', 'translation' or 'cutout'"),
    ({"diff_augment": ["cutout", "cutout"]}, r"method.params.diff_augment: Value error, cutout named more than once"),
    ({"reconstruction_decay_to": -0.5}, r"method.params.reconstruction_decay_to: Input should be greater than or equal"),
    ({"r1": 1}, r"method.params.r1: Extra inputs are not permitted"),
])
def test_bad_pix2pix_params_are_one_line(params, message):
    refused(message, method={"name": "pix2pix", "params": params})


def test_feature_matching_needs_a_discriminator_that_gives_features():
    refused(r"method.params.feature_matching: discriminator 'pixelgan' gives no features \(forward_features\)",
            method={"params": {"feature_matching": 10}},
            model={"discriminator": {"name": "pixelgan", "params": {"ndf": 4}}})


def test_a_method_section_without_a_name_is_pix2pix():
    assert Recipe.from_dict(tiny_recipe(method={"params": {"feature_matching": 1}})).method.name == "pix2pix"


def test_i2i_run_with_every_option_on(tmp_path, write_recipe):
    import json

    from typer.testing import CliRunner

    from i2i.cli import app

    recipe = tiny_recipe(model={"generator": tiny_recipe()["model"]["generator"],
                                "discriminator": {"name": "multiscale", "params": {"ndf": 4, "n_layers": 2, "num_scales": 2}}},
                         train={"max_steps": 3, "tensorboard": False})
    sets = ["method.params.feature_matching=10", "method.params.diff_augment=[color,translation,cutout]",
            "method.params.reconstruction_decay_to=0.1", "train.d_lr_ratio=2", "losses.0.params.r1_gamma=1"]
    args = ["run", str(write_recipe(recipe)), "--out", str(tmp_path / "run"), "-q"]
    result = CliRunner().invoke(app, args + [f"--set={s}" for s in sets])
    assert result.exit_code == 0, result.output
    last = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and {"G_GAN", "G_l1", "G_feat", "D_real", "D_fake"} <= last.keys()
    assert all(v == v for v in last.values() if isinstance(v, float)), "finite losses"


def test_resume_with_every_option_on_equals_a_straight_run(tmp_path):
    from i2i.engine.faults import TrainingInterrupted

    def trainer(run_dir):
        recipe = tiny_recipe(method={"name": "pix2pix", "params": ALL_ON},
                             losses=[{"name": "gan", "params": {"r1_gamma": 1.0}}, {"name": "l1", "weight": 100.0}],
                             train={"batch_size": 2, "max_steps": 6, "d_lr_ratio": 2.0, "tensorboard": False})
        return Trainer(Recipe.from_dict(recipe), run_dir=run_dir)

    straight = trainer(tmp_path / "straight")
    straight.fit()
    first = trainer(tmp_path / "split")
    first.callbacks.append(StopAt(3))  # the same run (the decay spans its 6 steps), stopped midway
    with pytest.raises(TrainingInterrupted):
        first.fit()
    resumed = trainer(tmp_path / "split")
    resumed.fit(resume=True)
    assert resumed.step == 6
    for name in ("generator", "discriminator"):
        a, b = straight.networks[name].state_dict(), resumed.networks[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), f"{name} differs after resume"
