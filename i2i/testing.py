"""Contract tests for every registered component, built-in or plugin, as timm's suite runs every model.

Each component is built from its registration's ``example`` params and checked against its
kind's contract (``i2i.contracts``): generators (shape, dtype, range, ``size_multiple``,
gradients to every parameter), discriminators (logit maps, gradients, features where
given), losses (finite scalars with gradients; adversarial ones: every method), datasets (sample keys, shapes,
channels and range, seeded samples; file datasets read a tiny folder that
``write_example_data`` fills), training methods (two steps of tiny networks move every
network, finite detached losses, the resume state survives torch.save). A plugin's test module needs two lines (pytest required)::

    from i2i.testing import contract_tests

    test_contract = contract_tests("my-i2i")
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

from i2i.contracts import AdversarialLoss, Generator, ReconstructionLoss, StepTools
from i2i.plugins import normalize_distribution
from i2i.recipe import DataSection, Recipe, RecipeError
from i2i.registry import REGISTRIES, Entry

SIDE = 32  # the smallest input side tried: room for the norms and paddings of tiny maps
CROP = 32  # dataset samples: load at LOAD, crop to CROP
LOAD = 36

Check = Callable[[Entry, Path], None]


def _build(entry: Entry, **context: Any) -> Any:
    torch.manual_seed(0)
    return entry.obj(entry.params.model_validate(entry.example), **context)


def _assert_grads_reach_every_parameter(module: torch.nn.Module, entry: Entry) -> None:
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"{entry.name}: no gradient reaches {', '.join(missing[:5])}"
    bad = [name for name, p in module.named_parameters() if p.grad is not None and not p.grad.isfinite().all()]
    assert not bad, f"{entry.name}: non-finite gradients in {', '.join(bad[:5])}"


def _assert_finite_scalar(value: Any, what: str) -> None:
    assert isinstance(value, torch.Tensor) and value.dim() == 0, f"{what}: expected a scalar tensor, got {value!r}"
    assert value.isfinite(), f"{what} is {value.item()}"


# -- generators -----------------------------------------------------------------
def _sides(multiple: int) -> tuple[int, int]:
    """The smallest multiple of ``multiple`` from SIDE, and the next (an odd number of
    multiples, where a chain of stride-2 layers would round)."""
    smallest = multiple * -(-SIDE // multiple)
    return smallest, smallest + multiple


def output_shape_dtype_range(entry: Entry, tmp_path: Path) -> None:
    for in_channels, out_channels in ((3, 3), (1, 3)):
        generator = _build(entry, in_channels=in_channels, out_channels=out_channels)
        side = _sides(generator.size_multiple)[0]
        y = generator(torch.randn(2, in_channels, side, side))
        assert y.shape == (2, out_channels, side, side), f"{in_channels}->{out_channels} at {side}: {tuple(y.shape)}"
        assert y.dtype == torch.float32
        assert y.abs().max() <= 1, "generator output leaves [-1, 1] (no tanh?)"


def size_multiple_is_honoured(entry: Entry, tmp_path: Path) -> None:
    generator = _build(entry, in_channels=3, out_channels=3).eval()
    multiple = generator.size_multiple
    assert isinstance(multiple, int) and multiple >= 1, f"size_multiple is {multiple!r}"
    assert multiple == entry.obj.size_multiple_for(entry.params.model_validate(entry.example))
    with torch.no_grad():
        for side in _sides(multiple):
            assert generator(torch.randn(1, 3, side, side)).shape[-2:] == (side, side), f"side {side}"


def generator_gradients(entry: Entry, tmp_path: Path) -> None:
    generator = _build(entry, in_channels=3, out_channels=3)
    side = _sides(generator.size_multiple)[0]
    y = generator(torch.randn(2, 3, side, side))
    (y * torch.randn_like(y)).sum().backward()
    _assert_grads_reach_every_parameter(generator, entry)


# -- discriminators -------------------------------------------------------------
def _logit_maps(output: Any) -> list[torch.Tensor]:
    maps = output if isinstance(output, list) else [output]
    assert maps and all(isinstance(m, torch.Tensor) for m in maps), f"expected a tensor or a list of them, got {type(output)}"
    return maps


def logit_maps(entry: Entry, tmp_path: Path) -> None:
    for in_channels in (6, 4):  # (condition, image): RGB + RGB, gray + RGB
        maps = _logit_maps(_build(entry, in_channels=in_channels)(torch.randn(2, in_channels, SIDE, SIDE)))
        for logits in maps:
            assert logits.dim() == 4 and logits.shape[:2] == (2, 1), f"logits of shape {tuple(logits.shape)}, expected N x 1 x H x W"
            assert logits.isfinite().all()


def discriminator_gradients(entry: Entry, tmp_path: Path) -> None:
    discriminator = _build(entry, in_channels=6)
    pair = torch.randn(2, 6, SIDE, SIDE, requires_grad=True)
    sum((m * torch.randn_like(m)).sum() for m in _logit_maps(discriminator(pair))).backward()
    _assert_grads_reach_every_parameter(discriminator, entry)
    assert pair.grad is not None and pair.grad.abs().sum() > 0, "no gradient reaches the input (the generator learns through it)"


def discriminator_features(entry: Entry, tmp_path: Path) -> None:
    """Where a discriminator gives features: per scale, tensors of the batch ending with the logits."""
    discriminator = _build(entry, in_channels=6)
    if not discriminator.gives_features():
        return
    pair = torch.randn(2, 6, SIDE, SIDE)
    logits, features = _logit_maps(discriminator(pair)), discriminator.forward_features(pair)
    assert isinstance(features, list) and len(features) == len(logits), "forward_features: one list per scale"
    for scale, scale_logits in zip(features, logits):
        assert len(scale) >= 2 and all(f.shape[0] == 2 for f in scale), "forward_features: layers, then the logits"
        assert torch.allclose(scale[-1], scale_logits), "forward_features's last item is not forward's logits"


# -- losses ---------------------------------------------------------------------
def _images(seed: int) -> torch.Tensor:
    return torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def reconstruction_loss(entry: Entry, tmp_path: Path) -> None:
    fake = _images(1).requires_grad_(True)
    value = _build(entry)(fake, _images(2))
    _assert_finite_scalar(value, "the loss")
    value.backward()
    assert fake.grad is not None and fake.grad.isfinite().all() and fake.grad.abs().sum() > 0


def _logits(seed: int, scales: int) -> list[torch.Tensor]:
    rng = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 1, 4 // 2**i, 4 // 2**i, generator=rng).requires_grad_(True) for i in range(scales)]


def adversarial_generator_loss(entry: Entry, tmp_path: Path) -> None:
    loss = _build(entry)
    for scales in (1, 2):  # one logit map, or one per scale
        fake = _logits(1, scales)
        value = loss.generator_loss(fake[0] if scales == 1 else fake)
        _assert_finite_scalar(value, "generator_loss")
        value.backward()
        assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in fake), "generator_loss does not depend on every logit map"


def adversarial_discriminator_loss(entry: Entry, tmp_path: Path) -> None:
    loss = _build(entry)
    for scales in (1, 2):
        real, fake = _logits(1, scales), _logits(2, scales)
        terms = loss.discriminator_loss(*((real[0], fake[0]) if scales == 1 else (real, fake)))
        assert isinstance(terms, tuple) and len(terms) == 2, "discriminator_loss returns (real term, fake term)"
        for term, what in zip(terms, ("real term", "fake term")):
            _assert_finite_scalar(term, f"discriminator_loss's {what}")
        sum(terms).backward()
        assert all(t.grad is not None for t in real + fake), "discriminator_loss does not depend on every logit map"


class _TinyCritic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def adversarial_gradient_penalty(entry: Entry, tmp_path: Path) -> None:
    critic = _TinyCritic()
    penalty = _build(entry).gradient_penalty(critic, _images(1), _images(2))
    if penalty is None:
        return
    _assert_finite_scalar(penalty, "gradient_penalty")
    penalty.backward()
    _assert_grads_reach_every_parameter(critic, entry)


# -- datasets -------------------------------------------------------------------
def write_example_data(root: Path) -> None:
    """Two tiny images per split (train, val, test) in the layouts datasets commonly read:
    ``<split>/N.png`` (A|B side by side, 2:1; also a folder of photos), ``<split>/A/N.png`` and
    ``<split>/B/N.png``, and CycleGAN's ``<split>A/N_A.png`` and ``<split>B/N_B.png``."""
    rng = np.random.default_rng(0)

    def write(path: Path, size: tuple[int, int]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (4, 8, 3), dtype=np.uint8)  # smooth colour blobs once resized
        Image.fromarray(small).resize(size, Image.BICUBIC).save(path)

    for split in ("train", "val", "test"):
        for n in (1, 2):
            write(root / split / f"{n}.png", (2 * LOAD, LOAD))
            for side in ("A", "B"):
                write(root / split / side / f"{n}.png", (LOAD, LOAD))
                write(root / f"{split}{side}" / f"{n}_{side}.png", (LOAD, LOAD))


def _dataset(entry: Entry, root: Path, split: str, train: bool) -> Any:
    data = DataSection(dataset={"name": entry.name, "params": entry.example}, root=root, load_size=LOAD, crop_size=CROP)
    return entry.obj(entry.params.model_validate(entry.example), data=data, split=split, train=train, seed=3)


def dataset_samples(entry: Entry, tmp_path: Path) -> None:
    for split, train in (("train", True), ("val", False)):
        dataset = _dataset(entry, tmp_path, split, train)
        dataset.prepare()
        assert len(dataset) >= 1, f"{split}: empty"
        sample = dataset[len(dataset) - 1]
        assert isinstance(sample["path"], str)
        for key, channels in (("input", dataset.in_channels), ("target", dataset.out_channels)):
            tensor = sample[key]
            assert tensor.shape == (channels, CROP, CROP), f"{split} {key}: {tuple(tensor.shape)}, expected {(channels, CROP, CROP)}"
            assert tensor.dtype == torch.float32
            assert -1 <= tensor.min() and tensor.max() <= 1, f"{split} {key} leaves [-1, 1]"


def dataset_is_seeded(entry: Entry, tmp_path: Path) -> None:
    """A sample depends only on (seed, epoch, index): a resumed run sees the same data."""
    first, second = (_dataset(entry, tmp_path, "train", True) for _ in range(2))
    for dataset in (first, second):
        dataset.prepare()
        dataset.set_epoch(1)
    for key in ("input", "target"):
        assert torch.equal(first[0][key], second[0][key]), f"{key} differs between two builds with one seed"


# -- methods --------------------------------------------------------------------
# The networks a method's check trains: small, with an encoder (CUT's features) and instance norm.
METHOD_MODEL = {
    "generator": {"name": "resnet", "params": {"ngf": 4, "n_blocks": 1, "antialias": True}},
    "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}},
}


def _method_recipe(entry: Entry) -> Recipe:
    """A tiny recipe for ``entry``: GAN + L1 where the method takes reconstruction losses, else GAN alone."""
    base = {"name": "method-check", "method": {"name": entry.name, "params": entry.example}, "model": METHOD_MODEL,
            "data": {"dataset": {"name": "synthetic"}, "load_size": SIDE, "crop_size": SIDE}}
    try:
        return Recipe.from_dict({**base, "losses": [{"name": "gan", "params": {"mode": "lsgan"}}, {"name": "l1"}]})
    except RecipeError:
        return Recipe.from_dict({**base, "losses": [{"name": "gan", "params": {"mode": "lsgan"}}]})


def _bound_method(entry: Entry) -> Any:
    torch.manual_seed(0)
    method = entry.obj(entry.params.model_validate(entry.example), recipe=_method_recipe(entry))
    networks = method.build_networks(3, 3)
    sides = (method.generator_side, method.discriminator_side)
    missing = [n for side in sides for n in side if n not in networks]
    assert not missing, f"{entry.name}: generator_side/discriminator_side name networks it did not build: {missing}"
    assert "generator" in networks, f"{entry.name}: the A -> B network must be called 'generator'"
    opt_g, opt_d = (torch.optim.Adam([p for n in side for p in networks[n].parameters()], lr=1e-3) for side in sides)
    method.bind(StepTools(networks, dict(networks), dict(networks), opt_g, opt_d, torch.amp.GradScaler("cpu", enabled=False),
                          contextlib.nullcontext, torch.device("cpu")))
    return method, networks


def method_step_trains_every_network(entry: Entry, tmp_path: Path) -> None:
    method, networks = _bound_method(entry)
    before = {name: [p.detach().clone() for p in network.parameters()] for name, network in networks.items()}
    real_a, real_b = (torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(s)) * 2 - 1 for s in (1, 2))
    for _ in range(2):
        losses = method.train_step(real_a, real_b)
    assert isinstance(losses, dict) and losses, "train_step returns the loss terms by name"
    for name, value in losses.items():
        _assert_finite_scalar(value, name)
        assert not value.requires_grad, f"{name}: return detached losses"
    for name, network in networks.items():
        moved = any(not torch.equal(a, b) for a, b in zip(before[name], network.parameters()))
        assert moved, f"{name}: two steps left every parameter as it was"


def method_state_round_trips(entry: Entry, tmp_path: Path) -> None:
    """What a method keeps for resume goes through torch.save and back."""
    method, _ = _bound_method(entry)
    method.train_step(*(torch.rand(1, 3, SIDE, SIDE) * 2 - 1 for _ in range(2)))
    path = tmp_path / "state.pt"
    torch.save(method.state_dict(), path)
    method.load_state_dict(torch.load(path, weights_only=True))


# -- the suite ------------------------------------------------------------------
def checks(kind: str, entry: Entry) -> list[Check]:
    if kind == "generators":
        return [output_shape_dtype_range, size_multiple_is_honoured, generator_gradients]
    if kind == "discriminators":
        return [logit_maps, discriminator_gradients, discriminator_features]
    if kind == "losses" and issubclass(entry.obj, AdversarialLoss):
        return [adversarial_generator_loss, adversarial_discriminator_loss, adversarial_gradient_penalty]
    if kind == "losses":
        return [reconstruction_loss]
    if kind == "methods":
        return [method_step_trains_every_network, method_state_round_trips]
    return [dataset_samples, dataset_is_seeded]


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    check: Check

    def __str__(self) -> str:
        return f"{self.kind.removesuffix('s')}-{self.name}-{self.check.__name__}"


def cases(distribution: str | None = None) -> list[Case]:
    """Every check of every registered component that ``distribution`` provides (None: all;
    "i2i": the built-ins)."""
    wanted = None if distribution is None else normalize_distribution(distribution)
    found = []
    for kind, registry in REGISTRIES.items():
        for entry in registry.entries():
            if wanted is None or entry.distribution == wanted:
                found += [Case(kind, entry.name, check) for check in checks(kind, entry)]
    return found


def contract_tests(distribution: str | None = None, write_data: Callable[[Path], None] = write_example_data) -> Callable:
    """A pytest test, parametrized over ``cases(distribution)``. Datasets read a folder that
    ``write_data(root)`` fills (default: ``write_example_data``'s layouts)."""
    found = cases(distribution)
    if not found:
        raise LookupError(f"no components from distribution {distribution!r} are registered: is it installed?")

    @pytest.mark.parametrize("case", found, ids=str)
    def test_contract(case: Case, tmp_path: Path) -> None:
        entry = REGISTRIES[case.kind].get(case.name)
        if case.kind == "datasets":
            write_data(tmp_path)
        case.check(entry, tmp_path)

    return test_contract
