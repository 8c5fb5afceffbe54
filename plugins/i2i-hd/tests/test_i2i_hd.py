"""i2i-hd's components, found by i2i through the entry points of the installed distribution:
i2i's contract suite, then what is particular to each."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("i2i_hd", reason="the i2i-hd plugin is not installed (pip install -e plugins/i2i-hd)")

from i2i.data.base import DataError  # noqa: E402
from i2i.engine.trainer import Trainer  # noqa: E402
from i2i.recipe import Recipe  # noqa: E402
from i2i.registry import DATASETS, DISCRIMINATORS, GENERATORS, LOSSES  # noqa: E402
from i2i.testing import contract_tests  # noqa: E402

torch.set_num_threads(2)
SMALL_G = GENERATORS.get("hd_local").example
SMALL_D = DISCRIMINATORS.get("sn_resnet").example

test_contract = contract_tests("i2i-hd")


@pytest.mark.parametrize(
    "registry,name",
    [(GENERATORS, "hd_local"), (DISCRIMINATORS, "sn_resnet"), (LOSSES, "focal_frequency"), (DATASETS, "cyclegan_folders")],
)
def test_components_come_from_the_distribution(registry, name):
    assert registry.get(name).origin.startswith("i2i-hd ")
    assert registry.get(name, plugins=["i2i-hd"]).distribution == "i2i-hd"


def test_local_enhancer_adds_the_global_features_at_half_resolution():
    g = GENERATORS.build("hd_local", SMALL_G, in_channels=1, out_channels=3)
    x = torch.randn(2, 1, 32, 32)
    coarse = g.coarse(g.downsample(x))
    assert coarse.shape == g.encode(x).shape == (2, 8, 16, 16)  # 2 * ngf channels at half size
    y = g(x)
    assert y.shape == (2, 3, 32, 32) and y.abs().max() <= 1
    y.mean().backward()
    assert g.coarse[1].weight.grad.abs().sum() > 0  # the global generator trains through the sum


def test_global_generator_is_the_resnet_generator_without_its_output_conv():
    g = GENERATORS.build("hd_local", SMALL_G, in_channels=3, out_channels=3)
    resnet = GENERATORS.build("resnet", {"ngf": 8, "n_downsampling": 2, "n_blocks": 1}, in_channels=3, out_channels=3)
    output_conv = 8 * 3 * 7 * 7 + 3
    assert sum(p.numel() for p in g.coarse.parameters()) == sum(p.numel() for p in resnet.parameters()) - output_conv


def test_sn_resnet_is_spectrally_normed_patch_critic():
    d = DISCRIMINATORS.build("sn_resnet", SMALL_D, in_channels=6)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in convs)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) for m in d.modules())
    logits = d(torch.randn(2, 6, 32, 32))
    assert logits.shape == (2, 1, 8, 8)  # one logit per patch, at 1 / 2**n_downsampling
    logits.mean().backward()


def test_focal_frequency_loss():
    fake, target = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    plain = LOSSES.build("focal_frequency", {"alpha": 0.0})
    # All weights 1 and an orthonormal FFT (Parseval): the mean squared pixel error.
    assert plain(fake, target).item() == pytest.approx(F.mse_loss(fake, target).item(), rel=1e-5)
    focal = LOSSES.build("focal_frequency", {})
    assert focal(target, target).item() == 0
    assert 0 < focal(fake, target).item() < plain(fake, target).item()  # weights are at most 1
    fake.requires_grad_(True)
    focal(fake, target).backward()
    assert math.isfinite(fake.grad.abs().sum().item()) and fake.grad.abs().sum() > 0


def test_focal_weights_follow_the_hard_frequencies():
    """An error at one frequency only: the focal loss keeps it at full weight."""
    target = torch.zeros(1, 1, 8, 8)
    wave = torch.cos(torch.arange(8.0) * 2 * math.pi * 2 / 8).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    focal, plain = LOSSES.build("focal_frequency", {}), LOSSES.build("focal_frequency", {"alpha": 0.0})
    assert focal(wave, target).item() == pytest.approx(plain(wave, target).item(), rel=1e-5)


def write_images(folder: Path, names: list[str], size: int = 24, seed: int = 0) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / name)


@pytest.fixture
def cyclegan_root(tmp_path):
    root = tmp_path / "maps"
    write_images(root / "trainA", ["1_A.jpg", "2_A.jpg", "10_A.jpg"])
    write_images(root / "trainB", ["10_B.png", "2_B.png", "1_B.png"], seed=1)
    write_images(root / "testA", ["5_A.jpg"])
    write_images(root / "testB", ["5_B.jpg"])
    return root


def hd_recipe(root, **data):
    return Recipe.from_dict({
        "name": "hd_tiny",
        "plugins": ["i2i-hd"],
        "model": {"generator": {"name": "hd_local", "params": SMALL_G},
                  "discriminator": {"name": "sn_resnet", "params": SMALL_D}},
        "losses": [{"name": "gan", "params": {"mode": "hinge"}}, {"name": "l1", "weight": 100.0},
                   {"name": "focal_frequency", "weight": 1.0}],
        "data": {"dataset": {"name": "cyclegan_folders"}, "root": str(root), "load_size": 36, "crop_size": 32, **data},
        "train": {"device": "cpu", "max_steps": 2, "batch_size": 2, "log_every": 1, "compile": False},
    })


def test_cyclegan_folders_pair_by_name(cyclegan_root):
    recipe = hd_recipe(cyclegan_root)
    train = DATASETS.build("cyclegan_folders", {}, data=recipe.data, split="train", train=True)
    assert [(a.name, b.name) for a, b in train.files] == [("1_A.jpg", "1_B.png"), ("2_A.jpg", "2_B.png"), ("10_A.jpg", "10_B.png")]
    val = DATASETS.build("cyclegan_folders", {}, data=recipe.data, split="val", train=False)
    assert [a.parent.name for a, _ in val.files] == ["testA"]  # no valA: CycleGAN's test split
    sample = train[0]
    assert sample["input"].shape == sample["target"].shape == (3, 32, 32)


def test_cyclegan_folders_report_unpaired_names(cyclegan_root):
    (cyclegan_root / "trainB" / "1_B.png").unlink()
    with pytest.raises(DataError, match=r"1 image name\(s\) in only one of .*trainA.*trainB.*: 1 "):
        DATASETS.build("cyclegan_folders", {}, data=hd_recipe(cyclegan_root).data, split="train")


def test_trains_two_steps_with_every_plugin_component(cyclegan_root, tmp_path):
    trainer = Trainer(hd_recipe(cyclegan_root, direction="BtoA"), run_dir=tmp_path / "run")
    losses = trainer.fit()
    assert trainer.step == 2 and {"G_focal_frequency", "G_l1"} <= set(losses)
    assert all(math.isfinite(v) for v in losses.values())
