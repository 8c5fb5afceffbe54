"""The README stays true: its shell blocks and Python examples run, its links resolve,
its recipes table matches recipes/.

Every line of every ```bash block runs, in order, in one sandbox folder whose
``recipes/`` holds shrunk copies of the shipped recipes (tiny networks, 32x32
crops, 2 steps; see ``conftest.shrink``) and whose ``data/maps`` is the
``fake_data_root`` fixture. So ``i2i run recipes/pix2pix_maps.yaml`` trains for
real, only smaller. Beyond that, the test changes the README's commands only as
SHRINK and INSTEAD say, and fails when an INSTEAD line is no longer in the
README. ``i2i`` commands run in this process through typer's CliRunner (a new
process would spend seconds importing torch for each); others run in a shell.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import RECIPES, ROOT, shrink

README = ROOT / "README.md"

# (pattern, replacement) applied to every command: long runs become short ones.
SHRINK = [
    (r"train\.max_steps=\d+", "train.max_steps=2"),
    (r"^(i2i bench speed \S+)$", r"\1 --steps 1 --warmup 0 --repeats 1 --infer-batch 2"),
    # One-step timings are noise (default and tuned can differ by 20%): the command must run;
    # what compare flags is tested in test_bench.
    (r"^i2i bench compare$", "i2i bench compare --threshold 10"),
]

# Commands that cannot run here as written, and what checks them instead.
INSTEAD = {
    # Installing again would rebuild the environment the test runs in: check that
    # it is this project, installed with the `dev` extra the command names.
    'pip install -e ".[dev]"': (
        "python -c \"import importlib.metadata as m, i2i, pytest, hypothesis; "
        "assert 'dev' in m.metadata('i2i').get_all('Provides-Extra')\""
    ),
    # The test suite inside the test suite: check it is the command CI runs.
    "python -m pytest -q": f"grep -qx 'python -m pytest -q' {ROOT / '.ci' / 'run'}",
    # Needs the network: list the catalogue, the same command group without the download.
    "i2i data download maps --root data": "i2i data list --root data",
    # A server that runs until stopped: read the same event files once instead.
    "tensorboard --logdir runs": "tensorboard --inspect --logdir runs",
}


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M)


def python_block(containing: str) -> str:
    """The README's one ```python block that contains ``containing``."""
    (block,) = [b for b in re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M) if containing in b]
    return block


def readme_commands() -> list[str]:
    """Each command line of the README's shell blocks, without its trailing comment."""
    lines = [line.split("  #")[0].strip() for block in shell_blocks(README.read_text()) for line in block.splitlines()]
    return [line for line in lines if line]


def runnable(command: str) -> str:
    command = INSTEAD.get(command, command)
    for pattern, replacement in SHRINK:
        command = re.sub(pattern, replacement, command)
    return command


def test_instead_lines_are_in_the_readme():
    assert set(INSTEAD) <= set(readme_commands()), f"stale INSTEAD entries: {set(INSTEAD) - set(readme_commands())}"


@pytest.fixture
def sandbox(tmp_path, fake_data_root) -> Path:
    folder = tmp_path / "sandbox"
    (folder / "recipes").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "data" / "maps").symlink_to(fake_data_root)
    for path in RECIPES:
        (folder / "recipes" / path.name).write_text(yaml.safe_dump(shrink(yaml.safe_load(path.read_text()), fake_data_root)))
    return folder


def test_readme_shell_blocks_run(sandbox, monkeypatch):
    from typer.testing import CliRunner

    from i2i.cli import app

    monkeypatch.chdir(sandbox)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    commands = readme_commands()
    assert len(commands) >= 10
    for original in commands:
        assert not re.search(r"[|&;<>`$]", original), f"keep README commands simple (one command a line): {original}"
        command = runnable(original)
        words = shlex.split(command)
        if words[0] == "i2i":
            result = CliRunner().invoke(app, words[1:])
            assert result.exit_code == 0, f"{command}\n{result.output[-3000:]}\n{result.exception!r}"
        else:
            done = subprocess.run(words, env=env, capture_output=True, text=True, timeout=300)
            assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def test_readme_first_screen_example_runs(sandbox, monkeypatch):
    """For real: the shrunk flagship recipe trains runs/pix2pix_maps (as `i2i run
    recipes/pix2pix_maps.yaml` under Set up does), map.png is the map half of a fake
    val pair, and the example must write aerial.png at map.png's size."""
    from PIL import Image
    from typer.testing import CliRunner

    from i2i.cli import app

    monkeypatch.chdir(sandbox)
    result = CliRunner().invoke(app, ["run", "recipes/pix2pix_maps.yaml", "--quiet", "--no-tensorboard"])
    assert result.exit_code == 0, f"{result.output[-3000:]}\n{result.exception!r}"
    with Image.open("data/maps/val/1.jpg") as pair:
        pair.crop((pair.width // 2, 0, pair.width, pair.height)).save("map.png")
    block = python_block("i2i.load(")
    assert README.read_text().index(block) < README.read_text().index("## Set up"), "keep the example on the first screen"
    exec(compile(block, "README.md", "exec"), {})
    with Image.open("aerial.png") as aerial, Image.open("map.png") as source:
        assert aerial.size == source.size and aerial.mode == "RGB"


def test_readme_links_resolve():
    text = README.read_text()
    links = re.findall(r"\]\(([^)#\s]+)[^)]*\)", text)
    local = [link for link in links if "://" not in link]
    assert "docs/images/maps_samples.jpg" in local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, f"README links to missing files: {missing}"


def test_recipes_table_lists_every_recipe_with_its_networks():
    rows = re.findall(r"^\| \[`(\w+)`\]\(recipes/(\w+)\.yaml\) \|(.*)$", README.read_text(), re.M)
    assert sorted(name for name, _, _ in rows) == sorted(path.stem for path in RECIPES)
    for name, file_stem, rest in rows:
        assert name == file_stem
        recipe = yaml.safe_load((ROOT / "recipes" / f"{name}.yaml").read_text())
        cells = [cell.strip().strip("`") for cell in rest.split("|")]
        assert cells[1] == recipe["model"]["generator"]["name"], name
        assert cells[2] == recipe["model"]["discriminator"]["name"], name
        if "method" in recipe:  # the unpaired table names the method in its fourth column
            assert cells[3].startswith(recipe["method"]["name"]), name


def test_readme_component_example_registers_and_works_in_a_recipe():
    import torch

    from i2i.methods.base import build_losses
    from i2i.recipe import Recipe
    from i2i.registry import LOSSES

    from conftest import tiny_recipe

    block = python_block("LOSSES.register")
    name = re.search(r'LOSSES\.register\("(\w+)"', block).group(1)
    try:
        exec(compile(block, "README.md", "exec"), {})
        recipe = Recipe.from_dict(tiny_recipe(losses=[{"name": "gan"}, {"name": name, "weight": 10.0, "params": {"eps": 0.01}}]))
        _, [(loss_name, loss, weight)] = build_losses(recipe)
        assert (loss_name, weight) == (name, 10.0)
        value = loss(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4))
        assert torch.isclose(value, torch.tensor(1.0001**0.5 * 1.0), atol=1e-3)
    finally:
        LOSSES._entries.pop(name, None)
