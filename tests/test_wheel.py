"""The built wheel, not the checkout: recipes and the console script must ship in it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build from a copy of the tracked files (the build writes build/ and egg-info next to its sources)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs the git checkout to list the tracked files")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    # No build isolation: setuptools is already installed, and the build must not reach the network.
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(work / "dist")], check=True, capture_output=True, text=True)
    (whl,) = (work / "dist").glob("sinecompress-*.whl")
    return whl


def test_wheel_carries_the_recipes_and_the_entry_point(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("sinecompress/recipe/shipped/") and n.endswith(".yaml"))
    assert [Path(n).stem for n in shipped] == ["convnext", "llama", "minilm", "vit"]
    assert "sinecompress_entry.py" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/"))]
    (ep,) = [n for n in names if n.endswith("entry_points.txt")]
    cfg = configparser.ConfigParser()
    cfg.read_string(zipfile.ZipFile(wheel).read(ep).decode())
    assert cfg["console_scripts"]["sinecompress"] == "sinecompress_entry:main"


def test_installed_wheel_reaches_its_recipes(wheel, tmp_path):
    """Unpacked wheel first on the path, run from a folder far from the checkout: what pip install gives."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {"PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    run = tmp_path / "run"
    run.mkdir()

    def sc(*args):
        return subprocess.run([sys.executable, "-c", "import sys; from sinecompress_entry import main; "
                               "sys.argv[0] = 'sinecompress'; main()", *args],
                              cwd=run, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import sinecompress; print(sinecompress.__file__)"],
                           cwd=run, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where
    p = sc("recipe", "list")
    assert p.returncode == 0 and "minilm" in p.stdout and "llama" in p.stdout, p.stderr
    p = sc("recipe", "init", "--from", "minilm", "--out", "mine.yaml")
    assert p.returncode == 0, p.stderr
    assert "example:minilm" in (run / "mine.yaml").read_text()
    p = sc("recipe", "validate", "mine.yaml")
    assert p.returncode == 0, p.stderr
