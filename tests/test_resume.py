"""Resume is exact: N steps, stop, resume to 2N gives the weights of 2N straight steps."""

import pytest
import torch

from i2i.engine.trainer import Trainer
from i2i.recipe import Recipe

from conftest import tiny_recipe

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 4 steps per epoch; the decay epoch changes the learning rate at step 4. The 64x64
# U-Net with six downsamplings has a dropout layer, so the restored RNG matters too.
CASES = {
    "unet5-32px": {},
    "unet6-64px-dropout": {
        "model": {
            "generator": {"name": "unet", "params": {"num_downs": 6, "ngf": 4}},
            "discriminator": {"name": "patchgan", "params": {"ndf": 4, "n_layers": 2}},
        },
        "data": {"dataset": {"name": "synthetic", "params": {"length": 8, "size": 72}}, "load_size": 68, "crop_size": 64},
    },
}


def train(run_dir, case, max_steps, resume=False) -> Trainer:
    recipe = tiny_recipe(**CASES[case])
    recipe["train"].update(batch_size=2, max_steps=max_steps, checkpoint_every=1000)
    trainer = Trainer(Recipe.from_dict(recipe), run_dir=run_dir)
    trainer.fit(resume=resume)
    return trainer


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"tensors differ after resume: {different}"


@pytest.mark.parametrize("case", CASES)
def test_resume_midway_equals_a_straight_run(case, tmp_path):
    straight = train(tmp_path / "straight", case, 7)
    first = train(tmp_path / "split", case, 3)
    assert first.step == 3
    resumed = train(tmp_path / "split", case, 7, resume=True)
    assert resumed.step == 7
    assert_same_weights(straight.generator, resumed.generator)
    assert_same_weights(straight.discriminator, resumed.discriminator)
    for name in ("opt_g", "opt_d"):
        a, b = getattr(straight, name).state_dict()["state"], getattr(resumed, name).state_dict()["state"]
        assert all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
