"""Building h3lab's wheel for the packaging tests, and reading pyproject.toml's package list.

The wheel is built from a copy of the source tree, so setuptools' build/ and *.egg-info folders
never land in the checkout (where ruff, mypy and pytest would read them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# What a wheel is built from: the packages, the site's templates and static files, and the
# files pyproject.toml names (README.md as the long description, LICENSE).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "templates", "static")
# Every top-level package of the flat layout (a folder with __init__.py), found rather than
# listed, so a new one that pyproject.toml does not name fails tests/test_packaging.py.
NOT_SHIPPED = {"tests", "scripts"}
TOP_PACKAGES = tuple(
    sorted(
        d.name
        for d in ROOT.iterdir()
        if (d / "__init__.py").is_file() and d.name not in NOT_SHIPPED
    )
)


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def listed_packages() -> list[str]:
    packages: list[str] = pyproject()["tool"]["setuptools"]["packages"]
    return packages


def build_wheel(dest: Path) -> Path:
    """Build the wheel (no dependencies, no build isolation: seconds, no network) into
    ``dest`` and return its path."""
    src = dest / "src"
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
    for name in SOURCES + TOP_PACKAGES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = dest / "dist"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps"]
    done = subprocess.run(
        [*pip_wheel, "--no-build-isolation", "--no-index", "--wheel-dir", str(out), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    (wheel,) = out.glob("h3lab-*.whl")
    return wheel
