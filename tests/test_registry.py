import pytest
from pydantic import BaseModel, ConfigDict

from i2i.registry import DATASETS, DISCRIMINATORS, GENERATORS, LOSSES, Registry, RegistryError


class P(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = 4


def make_registry():
    return Registry("widget", "i2i.test_widgets")


def test_register_build_and_list():
    reg = make_registry()

    @reg.register("unet_small", params=P)
    def small(params, scale=1):
        return params.width * scale

    @reg.register("resnet", params=P)
    def other(params):
        return 0

    assert reg.build("unet_small", {"width": 3}, scale=2) == 6
    assert reg.list("unet*") == ["unet_small"]
    assert reg.list() == ["resnet", "unet_small"]
    assert "resnet" in reg and "nope" not in reg


def test_duplicate_name_names_both():
    reg = make_registry()
    reg.register("a", params=P)(lambda p: 1)
    with pytest.raises(RegistryError, match="registered twice.*built-in"):
        reg.register("a", params=P)(lambda p: 2)


def test_unknown_name_suggests_close_ones():
    reg = make_registry()
    reg.register("patchgan", params=P)(lambda p: 1)
    with pytest.raises(RegistryError, match=r"unknown widget 'pachgan'. Did you mean 'patchgan'\?"):
        reg.get("pachgan")


def test_params_must_forbid_extra():
    class Loose(BaseModel):
        x: int = 1

    with pytest.raises(TypeError, match="extra='forbid'"):
        make_registry().register("x", params=Loose)


def test_builtins_are_registered():
    assert "unet" in GENERATORS.list()
    assert {"patchgan", "pixelgan"} <= set(DISCRIMINATORS.list())
    assert {"gan", "l1"} <= set(LOSSES.list())
    assert {"aligned", "synthetic"} <= set(DATASETS.list())
