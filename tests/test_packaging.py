"""The installed distribution: one top-level import name, `genray`, with the design card's folders
under it, the shipped configs and the gallery page inside, and a `genray` command."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel pip builds from the tracked files (a copy, so the checkout gets no build/)."""
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, tracked.decode().split("\0")):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (found,) = out.glob("genray-*.whl")
    return found


def test_the_wheel_claims_only_the_genray_import_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"genray"}, top
    for needed in ("genray/__init__.py", "genray/__main__.py", "genray/components/models/__init__.py",
                   "genray/pipelines/cli.py", "genray/pipelines/configs/vae/vae_digits.yaml",
                   "genray/pipelines/web/index.html"):
        assert needed in names, needed
    entry = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "genray = genray.pipelines.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_the_unpacked_wheel_imports_from_itself(wheel, tmp_path):
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    code = ("import genray, genray.components.models as m, genray.pipelines.catalog as c; "
            "print(genray.__path__[0], m.__file__, len(c.shipped()) > 10, genray.load.__module__)")
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    package, models, configs, api = proc.stdout.split()
    site = str(tmp_path / "site")
    assert package == f"{site}/genray" and models.startswith(f"{site}/genray/components/")
    assert configs == "True" and api == "genray.pipelines.sample"
