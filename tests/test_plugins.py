"""Plugins through entry points: lazy loading, origins, broken plugins, double claims, allow-lists.

Each test installs throwaway distributions as ``*.dist-info`` folders in a temp
dir on sys.path, which is all ``importlib.metadata`` needs to find them.
"""

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from i2i.cli import _describe_params, app
from i2i.engine.build import build_generator
from i2i.recipe import Recipe, RecipeError
from i2i.registry import GENERATORS, REGISTRIES, RegistryError
from i2i.testing import cases as contract_cases

from conftest import tiny_recipe

LAZY_MODULE = """
from torch import nn
from i2i.contracts import Generator, Params
from i2i.registry import GENERATORS

class LazyParams(Params):
    scale: float = 1.0

@GENERATORS.register("lazy_gen", params=LazyParams, example={"scale": 0.5})
class LazyGenerator(Generator):
    def __init__(self, params, in_channels=3, out_channels=3):
        super().__init__(params)
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.scale = params.scale

    @classmethod
    def size_multiple_for(cls, params):
        return 1

    def forward(self, x):
        return (self.conv(x) * self.scale).tanh()
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site dir on sys.path, with the registries and sys.modules restored afterwards."""
    for registry in REGISTRIES.values():
        registry.list()  # built-ins and installed plugins load before the snapshot
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "failures", list(registry.failures))
    monkeypatch.delenv("I2I_PLUGINS", raising=False)
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    before = set(sys.modules)
    yield folder
    for name in set(sys.modules) - before:
        if name.startswith(("i2i_fake", "my_i2i")):
            del sys.modules[name]


def install(site, dist, version, entry_points, modules=None):
    """Write a distribution's metadata (and its modules) into ``site``."""
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = []
    for group, points in entry_points.items():
        lines.append(f"[{group}]")
        lines += [f"{name} = {value}" for name, value in points.items()]
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    for module, source in (modules or {}).items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def test_plugin_loads_lazily_by_name_with_its_origin(site):
    install(site, "i2i-lazy", "1.2", {"i2i.generators": {"lazy_gen": "i2i_fake_lazy:LazyGenerator"}},
            {"i2i_fake_lazy": LAZY_MODULE})
    Recipe.from_dict(tiny_recipe())
    GENERATORS.get("unet")
    assert "lazy_gen" not in GENERATORS, "`in` says what is registered, importing nothing"
    assert "i2i_fake_lazy" not in sys.modules, "a plugin is imported only when its name is asked for"
    entry = GENERATORS.get("lazy_gen")
    assert "i2i_fake_lazy" in sys.modules and "lazy_gen" in GENERATORS
    assert entry.origin == "i2i-lazy 1.2" and entry.distribution == "i2i-lazy"
    recipe = Recipe.from_dict(tiny_recipe(model={"generator": {"name": "lazy_gen", "params": {"scale": 2.0}}}))
    assert build_generator(recipe, 3, 3).scale == 2.0


def test_broken_plugin_is_reported_and_everything_else_works(site):
    install(site, "i2i-broken", "0.3", {
        "i2i.generators": {"missing_gen": "i2i_fake_nowhere.models:Generator"},
        "i2i.losses": {"crashing_loss": "i2i_fake_crash:Loss"},
    }, {"i2i_fake_crash": "raise RuntimeError('needs a GPU driver')\n"})
    assert "unet" in GENERATORS.list() and "missing_gen" not in GENERATORS.list()
    (failure,) = [f for f in GENERATORS.failures if f.name == "missing_gen"]
    assert failure.distribution == "i2i-broken 0.3"
    assert failure.entry_point == "i2i_fake_nowhere.models:Generator"
    assert "ModuleNotFoundError" in failure.error
    with pytest.raises(RegistryError, match=r"i2i-broken 0\.3.*i2i_fake_crash:Loss.*RuntimeError: needs a GPU driver"):
        REGISTRIES["losses"].get("crashing_loss")
    # Built-ins, and a recipe made of them, are untouched.
    GENERATORS.build("unet", GENERATORS.get("unet").example, in_channels=3, out_channels=3)
    Recipe.from_dict(tiny_recipe())


def test_a_plugin_that_exits_while_importing_is_a_failure_not_an_exit(site):
    install(site, "i2i-quits", "0.1", {"i2i.losses": {"quitting_loss": "i2i_fake_quits:Loss"}},
            {"i2i_fake_quits": "import sys\nsys.exit('no licence server')\n"})
    listing = CliRunner().invoke(app, ["list", "losses"])
    assert listing.exit_code == 0, listing.output
    assert "plugin loss 'quitting_loss' from distribution i2i-quits 0.1" in listing.output
    assert "SystemExit: no licence server" in listing.output
    with pytest.raises(RegistryError, match="SystemExit"):
        REGISTRIES["losses"].get("quitting_loss")


def test_a_component_must_subclass_its_contract(site):
    install(site, "i2i-loose", "0.1", {"i2i.generators": {"loose_gen": "i2i_fake_loose:G"}}, {"i2i_fake_loose": """
        from torch import nn
        from i2i.contracts import Params
        from i2i.registry import GENERATORS

        @GENERATORS.register("loose_gen", params=Params)
        class G(nn.Module):
            pass
    """})
    with pytest.raises(RegistryError, match=r"i2i-loose 0\.1.*TypeError: generator 'loose_gen': .*G must subclass i2i.contracts.Generator"):
        GENERATORS.get("loose_gen")


def test_a_name_claimed_by_a_plugin_and_a_builtin_names_both(site):
    install(site, "i2i-clash", "2.0", {"i2i.generators": {"unet": "i2i_fake_clash:UNet"}})
    with pytest.raises(RegistryError, match=r"generator 'unet' is claimed twice: by built-in .*and by i2i-clash 2\.0"):
        GENERATORS.get("unet")
    GENERATORS.list()
    assert any(f.name == "unet" and "claimed twice" in f.error for f in GENERATORS.failures)


def test_a_name_claimed_by_two_plugins_names_both(site):
    install(site, "i2i-one", "1.0", {"i2i.generators": {"twin": "i2i_fake_one:G"}})
    install(site, "i2i-two", "1.0", {"i2i.generators": {"twin": "i2i_fake_two:G"}})
    with pytest.raises(RegistryError, match=r"claimed twice: by i2i-(one|two) 1\.0 .* and by i2i-(one|two) 1\.0"):
        GENERATORS.get("twin")


def test_allow_lists_restrict_plugins(site, monkeypatch):
    install(site, "i2i-clash", "2.0", {"i2i.generators": {"unet": "i2i_fake_clash:UNet"}})
    install(site, "i2i-lazy", "1.2", {"i2i.generators": {"lazy_gen": "i2i_fake_lazy:LazyGenerator"}},
            {"i2i_fake_lazy": LAZY_MODULE})
    # A recipe's plugins list keeps other distributions out, clashes included.
    recipe = Recipe.from_dict(tiny_recipe(plugins=["I2I_Lazy"]))
    build_generator(recipe, 3, 3)
    with pytest.raises(RecipeError, match=r"model.generator.name: generator 'lazy_gen' comes from i2i-lazy 1\.2, which is not among"):
        Recipe.from_dict(tiny_recipe(plugins=[], model={"generator": {"name": "lazy_gen"}}))
    with pytest.raises(RecipeError, match=r"plugins: distribution 'i2i-absent' is not installed"):
        Recipe.from_dict(tiny_recipe(plugins=["i2i-absent"]))
    # I2I_PLUGINS does the same for the whole process; "" means built-ins only.
    monkeypatch.setenv("I2I_PLUGINS", "")
    assert GENERATORS.get("unet").origin == "built-in"
    with pytest.raises(RegistryError, match="not among the allowed"):
        GENERATORS.get("lazy_gen")


def test_cli_list_shows_origins_params_and_failures(site):
    install(site, "i2i-lazy", "1.2", {"i2i.generators": {"lazy_gen": "i2i_fake_lazy:LazyGenerator"}},
            {"i2i_fake_lazy": LAZY_MODULE})
    install(site, "i2i-broken", "0.3", {"i2i.discriminators": {"missing_d": "i2i_fake_nowhere:D"}})
    runner = CliRunner()
    listing = runner.invoke(app, ["list"])
    assert listing.exit_code == 0, listing.output
    rows = {tuple(cell.strip() for cell in line.strip("│ ").split("│")) for line in listing.output.splitlines()}
    assert ("generators", "lazy_gen", "i2i-lazy 1.2") in rows
    assert ("generators", "unet", "built-in") in rows
    assert ("discriminators", "multiscale", "built-in") in rows
    assert "plugin discriminator 'missing_d' from distribution i2i-broken 0.3" in listing.output

    schema = runner.invoke(app, ["list", "generator", "unet", "--params"])
    assert schema.exit_code == 0, schema.output
    assert "generators unet (built-in)" in schema.output and "num_downs" in schema.output
    rows = {row[0]: row for row in _describe_params(GENERATORS.get("unet").params)}
    assert rows["norm"] == ("norm", "'batch' | 'instance' | 'none'", "'batch'", "")
    assert rows["num_downs"][3].startswith(">= 2, <= 10; ")
    timm_rows = {row[0]: row for row in _describe_params(GENERATORS.get("timm_unet").params)}
    assert timm_rows["pretrained_path"][1:3] == ("Path | None", "None")

    unknown = runner.invoke(app, ["list", "widgets"])
    assert unknown.exit_code != 0 and "unknown kind 'widgets'" in str(unknown.exception)


def test_the_guide_example_works(site):
    """docs/plugins.md's example loss, installed as its entry point says, is usable by name."""
    guide = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    source = re.search(r"```python\n# src/my_i2i/losses.py\n(.*?)```", guide, re.S).group(1)
    name, value = re.search(r'\[project.entry-points."i2i.losses"\]\n(\w+) = "([\w.:]+)"', guide).groups()
    (site / "my_i2i").mkdir()
    (site / "my_i2i" / "__init__.py").write_text("")
    (site / "my_i2i" / "losses.py").write_text(source)
    install(site, "my-i2i", "0.1.0", {"i2i.losses": {name: value}})
    recipe = Recipe.from_dict(tiny_recipe(plugins=["my-i2i"], losses=[{"name": "gan"}, {"name": name, "params": {"eps": 0.01}}]))
    loss = REGISTRIES["losses"].build(name, recipe.losses[1].params)
    assert REGISTRIES["losses"].get(name).origin == "my-i2i 0.1.0"
    assert loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)).item() == pytest.approx(0.01)
    # The guide's two lines of contract tests cover it.
    (case,) = contract_cases("my-i2i")
    case.check(REGISTRIES[case.kind].get(case.name), site)
