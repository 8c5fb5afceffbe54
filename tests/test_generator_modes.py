"""The generator's modes at inference (i2i.modes): eval, instance, train."""

import torch
from torch import nn

from i2i.engine.inference import generator_mode
from i2i.models.unet import UNetGenerator, UNetParams
from i2i.modes import MODES


def trained_a_little(dropout: float) -> UNetGenerator:
    torch.manual_seed(0)
    # num_downs 6: one 8*ngf decoder block, the one that has the dropout
    generator = UNetGenerator(UNetParams(num_downs=6, ngf=8, dropout=dropout))
    with torch.no_grad():
        for _ in range(3):  # running statistics away from their initial values
            generator(torch.rand(2, 3, 64, 64) * 2 - 1)
    return generator


def batchnorm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@torch.no_grad()
def test_instance_mode_is_training_at_batch_size_1_without_dropout_for_any_batch():
    generator = trained_a_little(dropout=0.0)
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    generator.train()
    one_at_a_time = torch.cat([generator(x[i : i + 1]) for i in range(3)])  # moves the running stats: read them after
    stored = batchnorm_state(generator)
    generator.eval()
    with generator_mode(generator, "instance"):
        together = generator(x)
        assert not generator.training
    torch.testing.assert_close(together, one_at_a_time, atol=1e-5, rtol=0)  # the same sums, batched
    assert all(torch.equal(v, batchnorm_state(generator)[k]) for k, v in stored.items()), "stored statistics untouched"
    assert not any("forward" in vars(m) for m in generator.modules()), "the layers are given back as they were"
    assert not generator.training, "the mode it had is restored"


@torch.no_grad()
def test_train_mode_keeps_dropout_seeded_and_instance_mode_is_deterministic():
    generator = trained_a_little(dropout=0.5)
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    outputs = {}
    for mode in MODES:
        runs = []
        for seed in (0, 0, 1):
            with generator_mode(generator, mode, seed=seed):
                runs.append(generator(x))
        outputs[mode] = runs
    for mode in ("eval", "instance"):
        assert torch.equal(outputs[mode][0], outputs[mode][2]), f"{mode}: no dropout, no randomness"
    same_seed, other_seed = outputs["train"][0], outputs["train"][2]
    assert torch.equal(same_seed, outputs["train"][1]) and not torch.equal(same_seed, other_seed)
    assert (outputs["eval"][0] - outputs["instance"][0]).abs().max() > 0.05, "stored vs own statistics differ"


class ConvNormAct(nn.Sequential):
    """Convolutions, each followed by timm's BatchNormAct2d (BatchNorm with its activation
    inside), down to a 1x1 map (one value per channel) at a 4x4 input."""

    def __init__(self):
        from timm.layers import BatchNormAct2d

        super().__init__(nn.Conv2d(3, 4, 3, 2, 1), BatchNormAct2d(4), nn.Conv2d(4, 4, 3, 2, 1), BatchNormAct2d(4))


def trained_copy(model: nn.Module, last_norm_stored: bool) -> nn.Module:
    """``model`` in training mode at batch 1 (the last norm layer in eval mode if asked)."""
    copy_ = ConvNormAct()
    copy_.load_state_dict(model.state_dict())
    copy_.train()
    copy_[3].train(not last_norm_stored)
    return copy_


@torch.no_grad()
def test_instance_mode_keeps_a_batchnorm_subclass_whole_and_uses_stored_statistics_at_one_value_per_channel():
    from i2i.engine.fast_inference import fast_generator

    torch.manual_seed(0)
    model = ConvNormAct()
    model.train()
    for _ in range(3):
        model(torch.rand(4, 3, 8, 8))
    model.eval()
    stored = batchnorm_state(model)
    x = torch.rand(2, 3, 8, 8) * 2 - 1  # 8 -> 4x4 -> 2x2: each image has its own statistics
    tiny = torch.rand(2, 3, 4, 4) * 2 - 1  # 4 -> 2x2 -> 1x1: the last norm has one value per channel
    expected = torch.cat([trained_copy(model, False)(image[None]) for image in x])  # with the activation
    expected_tiny = torch.cat([trained_copy(model, True)(image[None]) for image in tiny])
    with generator_mode(model, "instance"):
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(model(tiny), expected_tiny, atol=1e-5, rtol=0)
    fast = fast_generator(model, "instance", torch.rand(2, 3, 8, 8), precision="fp32")
    torch.testing.assert_close(fast(x), expected, atol=1e-4, rtol=0)
    assert all(torch.equal(v, batchnorm_state(model)[k]) for k, v in stored.items()), "stored statistics untouched"
