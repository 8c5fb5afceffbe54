from importlib import metadata

import pytest

from i2i.contracts import Params
from i2i.registry import REGISTRIES, Registry, RegistryError


class P(Params):
    width: int = 4


class Widget:
    def __init__(self, params: P, scale: int = 1):
        self.size = params.width * scale


def make_registry():
    return Registry("widget", "i2i.test_widgets", Widget)


def test_register_build_and_list():
    reg = make_registry()

    @reg.register("unet_small", params=P, example={"width": 1})
    class Small(Widget):
        pass

    reg.register("resnet", params=P)(type("Other", (Widget,), {}))
    assert reg.build("unet_small", {"width": 3}, scale=2).size == 6
    assert reg.build("unet_small", P(width=5)).size == 5  # a params object passes through
    assert reg.get("unet_small").example == {"width": 1} and reg.get("resnet").example == {}
    assert reg.list("unet*") == ["unet_small"]
    assert reg.list() == ["resnet", "unet_small"]
    assert "resnet" in reg and "nope" not in reg


def test_duplicate_name_names_both():
    reg = make_registry()
    reg.register("a", params=P)(Widget)
    with pytest.raises(RegistryError, match=r"registered twice: by module test_registry \(.*Widget\) and by module"):
        reg.register("a", params=P)(type("Again", (Widget,), {}))


def test_unknown_name_suggests_close_ones():
    reg = make_registry()
    reg.register("patchgan", params=P)(Widget)
    with pytest.raises(RegistryError, match=r"unknown widget 'pachgan'. Did you mean 'patchgan'\?"):
        reg.get("pachgan")


def test_params_must_be_a_params_model():
    from pydantic import BaseModel

    class Loose(BaseModel):
        x: int = 1

    with pytest.raises(TypeError, match="must subclass i2i.contracts.Params"):
        make_registry().register("x", params=Loose)


def test_a_component_must_subclass_the_contract_and_define_its_methods():
    reg = make_registry()
    with pytest.raises(TypeError, match=r"widget 'x': .*NotAWidget must subclass test_registry.Widget"):
        reg.register("x", params=P)(type("NotAWidget", (), {}))
    from i2i.registry import LOSSES
    from i2i.contracts import ReconstructionLoss

    class Unfinished(ReconstructionLoss):  # no forward
        pass

    with pytest.raises(TypeError, match="Unfinished does not define forward"):
        LOSSES.register("unfinished", params=P)(Unfinished)


@pytest.mark.parametrize("kind", REGISTRIES)
def test_every_builtin_is_declared_by_an_entry_point_of_its_name(kind):
    """Lookups find the built-ins through i2i's own entry points (pyproject.toml)."""
    registry = REGISTRIES[kind]
    declared = {p.name: p.load() for p in metadata.entry_points(group=registry.group) if p.dist.metadata["Name"] == "i2i"}
    builtins = {entry.name: entry.obj for entry in registry.entries() if entry.distribution == "i2i"}
    assert declared == builtins and builtins
