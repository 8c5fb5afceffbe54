"""The layers contract (pyproject.toml, import-linter): it holds, it covers every module,
and a back edge breaks it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from conftest import ROOT

LINT = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"]


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    return [name.strip() for layer in config["layers"] for name in layer.replace("|", ":").split(":")]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(LINT, cwd=root, env=env, capture_output=True, text=True)


def test_the_layers_contract_holds():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_module_of_the_package_sits_in_a_layer():
    modules = {f"i2i.{p.stem}" for p in (ROOT / "i2i").glob("*.py") if p.stem not in ("__init__", "__main__")}
    modules |= {f"i2i.{p.name}" for p in (ROOT / "i2i").iterdir() if (p / "__init__.py").is_file()}
    assert modules - set(_layers()) == set(), "add the new module to the layers in pyproject.toml"


def test_a_component_importing_the_engine_breaks_the_contract(tmp_path):
    shutil.copytree(ROOT / "i2i", tmp_path / "i2i", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with open(tmp_path / "i2i" / "models" / "unet.py", "a") as handle:
        handle.write("\nfrom i2i.engine.trainer import Trainer  # a back edge\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "i2i.models is not allowed to import i2i.engine" in result.stdout
