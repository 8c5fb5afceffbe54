"""What pyproject.toml cannot say: the recipes ship inside the package.

The top-level ``recipes/`` folder (where the README and the tests read them) becomes
``i2i/recipes/*.yaml`` in a wheel through a package_dir mapping: no copy, no link, one
source. ``i2i.recipe.shipped_recipes`` finds them there, or in a checkout's ``recipes/``.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["i2i*"]), "i2i.recipes"],
    package_dir={"i2i.recipes": "recipes"},
    package_data={"i2i.recipes": ["*.yaml"]},
)
