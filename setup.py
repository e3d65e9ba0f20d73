"""The one thing pyproject.toml cannot say: the import name. genray installs a single top-level
package, `genray`, with the design card's folders mapped under it (components/ as
genray.components, pipelines/ as genray.pipelines). Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

LAYERS = ("components", "pipelines")

setup(
    packages=["genray"] + [f"genray.{p}" for p in find_packages(include=[f"{layer}*" for layer in LAYERS])],
    package_dir={"genray": "genray", **{f"genray.{layer}": layer for layer in LAYERS}},
)
