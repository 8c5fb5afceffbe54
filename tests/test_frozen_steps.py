"""One training step of CycleGAN, CUT and FastCUT at the reference engine, held to frozen values.

Each method takes one step on fixed tensors from fixed weights; every loss term and every
updated weight is compared with ``frozen_steps.json``, recorded from the code as it was when
it matched the reference implementations (issue 30), so that a refactor cannot change the
published maths unseen. A weight is summarised by the sum and L1 norm of its initial value and
by two projections of its update in units of the learning rate (Adam's first step moves each
element by at most lr): fp32 on another CPU kind changes these in the last digits only.

Conv biases in front of an affine-free InstanceNorm get no gradient in exact arithmetic; in
fp32 they get rounding noise, which Adam's first step blows up to as much as lr. For those
(``normalised_away``: found from the layer order) only the initial value is compared.

Run ``python tests/test_frozen_steps.py`` to record the table again, only when the maths
changes on purpose, and say why in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import tiny_recipe, write_fake_photos  # noqa: E402
from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402

FROZEN = Path(__file__).with_name("frozen_steps.json")
LR = 2e-4

GENERATOR = {"name": "resnet", "params": {"ngf": 4, "n_blocks": 2, "norm": "instance"}}
PATCHGAN = {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2, "norm": "instance"}}
CASES = {
    "cyclegan": ({"name": "cyclegan", "params": {"pool_size": 2}}, False, {}),
    "cut": ({"name": "cut", "params": {"nce_layers": [0, 4, 8, 12], "num_patches": 16, "head_channels": 8}}, True, {}),
    "fastcut": ({"name": "cut", "params": {"mode": "fastcut", "nce_layers": [0, 4, 8], "num_patches": 16,
                                           "head_channels": 8}}, True, {}),
}


def step_recipe(case: str, root: Path) -> Recipe:
    method, antialias, discriminator = CASES[case]
    return Recipe.from_dict(tiny_recipe(
        method=method,
        model={"generator": {**GENERATOR, "params": {**GENERATOR["params"], "antialias": antialias}},
               "discriminator": {**PATCHGAN, "params": {**PATCHGAN["params"], **discriminator}}},
        losses=[{"name": "gan", "params": {"mode": "lsgan"}}],
        data={"dataset": {"name": "unaligned"}, "root": str(root)},
        train={"engine": "reference", "engine_probe": False, "compile": False, "lr": LR, "seed": 3,
               "tensorboard": False},
    ))


def normalised_away(network: torch.nn.Module) -> set[str]:
    """The biases of convolutions that an affine-free InstanceNorm follows directly."""
    names = set()
    for prefix, module in network.named_modules():
        if isinstance(module, torch.nn.Sequential):
            for (name, layer), after in zip(module.named_children(), list(module.children())[1:]):
                if isinstance(after, torch.nn.InstanceNorm2d) and not after.affine and getattr(layer, "bias", None) is not None:
                    names.add(f"{prefix}.{name}.bias".lstrip("."))
    return names


def one_step(case: str, root: Path, run_dir: Path) -> dict:
    """The loss terms of one step, and each weight's start (sum, L1) and update (in units of lr)."""
    trainer = Trainer(step_recipe(case, root), run_dir=run_dir)
    before = {name: {k: v.detach().clone() for k, v in net.named_parameters()} for name, net in trainer.networks.items()}
    fixed = torch.Generator().manual_seed(11)
    real_a, real_b = (torch.rand(1, 3, 32, 32, generator=fixed) * 2 - 1 for _ in range(2))
    torch.manual_seed(5)  # CUT's patch positions and FastCUT's flip come from the global stream
    losses = {name: float(value) for name, value in trainer.train_step(real_a, real_b).items()}
    weights = {}
    for name, net in trainer.networks.items():
        noise_only = normalised_away(net)
        for key, value in net.named_parameters():
            update = ((value.detach() - before[name][key]) / LR).double().flatten()
            probe = torch.randn(update.numel(), generator=torch.Generator().manual_seed(update.numel()),
                                dtype=torch.float64)
            start = before[name][key].double()
            weights[f"{name}.{key}"] = {
                "sum": float(start.sum()), "l1": float(start.abs().sum()),
                "normalised_away": key in noise_only,
                "update_sum": float(update.sum()), "update_probe": float(update @ probe),
            }
    return {"losses": losses, "weights": weights}


def unpaired_root(folder: Path) -> Path:
    for side, seed in (("trainA", 5), ("trainB", 6)):
        write_fake_photos(folder / side, 2, (40, 40), seed=seed)
    return folder


@pytest.mark.parametrize("case", CASES)
def test_one_step_is_the_frozen_step(case, tmp_path, one_torch_thread):
    frozen = json.loads(FROZEN.read_text())[case]
    now = one_step(case, unpaired_root(tmp_path / "data"), tmp_path / "run")
    assert now["losses"].keys() == frozen["losses"].keys()
    for term, value in frozen["losses"].items():
        assert now["losses"][term] == pytest.approx(value, rel=1e-4, abs=1e-6), term
    assert now["weights"].keys() == frozen["weights"].keys()
    for key, then in frozen["weights"].items():
        weight = now["weights"][key]
        assert weight["normalised_away"] == then["normalised_away"], f"{key}: normalised_away"
        assert weight["sum"] == pytest.approx(then["sum"], abs=1e-5 * max(then["l1"], 1.0)), f"{key}: sum"
        assert weight["l1"] == pytest.approx(then["l1"], rel=1e-5), f"{key}: l1"
        if not then["normalised_away"]:
            # Units of lr: a whole element's step is 1; fp32 rounding moves these by far less.
            for summary in ("update_sum", "update_probe"):
                assert weight[summary] == pytest.approx(then[summary], abs=0.05), f"{key}: {summary}"


if __name__ == "__main__":
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as scratch:
        root = unpaired_root(Path(scratch) / "data")
        table = {case: one_step(case, root, Path(scratch) / case) for case in CASES}
    FROZEN.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FROZEN}")
