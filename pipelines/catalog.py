"""The configs genray ships (pipelines/configs/), found by name from any folder.

    genray train vae/vae_digits          the shipped pipelines/configs/vae/vae_digits.yaml
    genray train ./my_experiment.yaml    a file, as given
    genray configs list | show NAME | copy NAME DEST

A name is a config's path under pipelines/configs/ without `.yaml`; the README's older form
`pipelines/configs/vae/vae_digits.yaml` resolves too, from any working directory. An unknown name
is a UserError listing the close matches. Light on purpose: no torch, no ray.
"""
from __future__ import annotations

import difflib
import shutil
from pathlib import Path

from genray.components.errors import UserError

CONFIGS = Path(__file__).with_name("configs")
PREFIX = "pipelines/configs/"


def shipped() -> dict[str, Path]:
    """Every shipped config by name (family/experiment), sorted."""
    return {str(p.relative_to(CONFIGS).with_suffix("")): p for p in sorted(CONFIGS.rglob("*.yaml"))}


def find(name: str | Path) -> Path:
    """The config file `name` means: an existing file as given, else a shipped config by name."""
    path = Path(name).expanduser()
    if path.is_file():
        return path
    key = str(name).removeprefix(PREFIX).removesuffix(".yaml").removesuffix(".yml")
    configs = shipped()
    if key in configs:
        return configs[key]
    close = difflib.get_close_matches(key, list(configs), n=4, cutoff=0.5)
    by_stem = [n for n in configs if n.rsplit("/", 1)[-1] == Path(key).name]
    hint = close + [n for n in by_stem if n not in close]
    raise UserError(f"{name}: config file not found, and genray ships no config of that name"
                    + (f"; did you mean {', '.join(hint)}?" if hint else "; `genray configs list` shows the shipped ones"))


def describe(path: Path) -> str:
    """A config's first comment line: what it trains."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def copy(name: str, dest: str | Path) -> Path:
    """A shipped config copied to `dest` (a file, or a folder to put it in); never overwrites."""
    source = find(name)
    dest = Path(dest).expanduser()
    target = dest / source.name if dest.is_dir() else dest
    if target.exists():
        raise UserError(f"{target}: already exists; pick another destination (genray never overwrites it)")
    if not target.parent.is_dir():
        raise UserError(f"{target.parent}: no such folder")
    shutil.copyfile(source, target)
    return target
