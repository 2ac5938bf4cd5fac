"""Installing the wheel into fresh virtualenvs and running what it installs, from a folder
outside the checkout (nothing of the source tree on sys.path).

- The client: a virtualenv with nothing in it but the wheel, installed with ``--no-index`` so
  pip could not fetch a dependency if the wheel declared one: ``h3lab-client`` answers
  ``--help`` and ``--version`` and runs, torch and Django are not importable there, and
  ``h3lab`` (the ML command line) says which extra to install.
- The platform: a virtualenv that sees this interpreter's packages (torch, Django, …) through a
  ``.pth`` file, the wheel installed with ``--no-deps``: ``h3lab --help`` and a short training
  run through the installed ``h3lab`` script, and Django finding the templates, static files
  and migrations inside the installed package.

No network: the wheel is built with ``--no-build-isolation`` and installed without an index.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import h3lab
from tests.wheels import build_wheel

pytestmark = pytest.mark.e2e
PIP = [sys.executable, "-m", "pip"]
TINY = [  # a model that trains 3 steps in well under a second
    "--steps",
    "3",
    "--d-model",
    "16",
    "--n-layer",
    "1",
    "--batch-size",
    "4",
    "--seq-len",
    "12",
    "--vocab-size",
    "8",
]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def make_venv(path: Path, wheel: Path, *, see_packages_of_this_python: bool) -> Path:
    """A virtualenv without pip (this interpreter's pip installs into it), with the wheel."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    if see_packages_of_this_python:
        purelib = Path(
            subprocess.run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
        (purelib / "_host_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            *PIP,
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-index",
            "--no-deps",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    return path / "bin"


def run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DJANGO_"))}
    clean = {k: v for k, v in clean.items() if not k.startswith(("DATABASE_", "CELERY_"))}
    return subprocess.run(
        cmd, cwd=cwd, env=clean | env, capture_output=True, text=True, timeout=300, check=False
    )


def test_the_client_installs_and_runs_without_torch_or_django(wheel: Path, tmp_path: Path) -> None:
    bin_ = make_venv(tmp_path / "venv", wheel, see_packages_of_this_python=False)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_ = run([str(bin_ / "h3lab-client"), "--help"], elsewhere)
    assert help_.returncode == 0, help_.stderr
    assert help_.stdout.startswith("usage: h3lab-client")
    assert "submit" in help_.stdout and "download" in help_.stdout
    version = run([str(bin_ / "h3lab-client"), "--version"], elsewhere)
    assert version.stdout.strip() == f"h3lab-client {h3lab.__version__}"
    module = run([str(bin_ / "python"), "-m", "h3lab.client", "--version"], elsewhere)
    assert module.stdout.strip() == f"h3lab-client {h3lab.__version__}"  # the same program
    # The ML command line knows its version, and says what to install instead of a traceback.
    cli_version = run([str(bin_ / "h3lab"), "--version"], elsewhere)
    assert cli_version.stdout.strip() == f"h3lab {h3lab.__version__}", cli_version.stderr
    cli = run([str(bin_ / "h3lab"), "--help"], elsewhere)
    assert cli.returncode == 1
    assert "needs torch" in cli.stderr and "pip install 'h3lab[ml]'" in cli.stderr
    # Talking to a lab that is not there fails with the client's own exit code, not an
    # ImportError: the commands really run.
    runs = run([str(bin_ / "h3lab-client"), "--url", "http://127.0.0.1:9", "runs"], elsewhere)
    assert runs.returncode == 7, runs.stderr  # EXIT_CONNECTION
    for heavy in ("torch", "django", "numpy"):
        found = run([str(bin_ / "python"), "-c", f"import {heavy}"], elsewhere)
        assert found.returncode == 1 and "ModuleNotFoundError" in found.stderr


def test_the_installed_platform_trains_and_finds_its_templates_and_migrations(
    wheel: Path, tmp_path: Path
) -> None:
    bin_ = make_venv(tmp_path / "venv", wheel, see_packages_of_this_python=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    help_ = run([str(bin_ / "h3lab"), "--help"], elsewhere)
    assert help_.returncode == 0, help_.stderr
    assert help_.stdout.startswith("usage: h3lab")
    assert run([str(bin_ / "h3lab"), "--version"], elsewhere).stdout.strip() == (
        f"h3lab {h3lab.__version__}"
    )
    train = [str(bin_ / "h3lab"), "train", "--preset", "attention", "--task", "induction_head"]
    trained = run([*train, *TINY, "--out", str(tmp_path / "run")], elsewhere)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert (tmp_path / "run").is_dir() and any((tmp_path / "run").rglob("*.safetensors"))

    probe = """
import json, django
from pathlib import Path
from django.conf import settings
django.setup()
import h3lab
from django.contrib.staticfiles import finders
from django.core.management import call_command
from django.template.loader import get_template
call_command("migrate", verbosity=0)
print(json.dumps({
    "package": str(Path(h3lab.__file__).parent),
    "template": get_template("base.html").origin.name,
    "app_template": get_template("api/tokens.html").origin.name,
    "static": finders.find("h3lab/app.css"),
    "var": str(settings.VAR_DIR),
}))
"""
    done = run(
        [str(bin_ / "python"), "-c", probe], elsewhere, DJANGO_SETTINGS_MODULE="h3lab.settings"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    package = found["package"]
    assert package.startswith(str(tmp_path / "venv"))
    assert found["template"] == f"{package}/_site/templates/base.html"
    assert found["app_template"].startswith(str(tmp_path / "venv"))
    assert found["static"] == f"{package}/_site/static/h3lab/app.css"
    assert found["var"] == str(elsewhere / "var")  # state in the working directory
    assert (elsewhere / "var" / "h3lab.sqlite3").is_file()  # every migration applied


def test_the_platform_extra_is_satisfied_by_the_locked_venv_without_fetching_torch(
    wheel: Path, tmp_path: Path
) -> None:
    """This venv was made the Makefile's way (torch, then the hashed lock). Resolving
    ``h3lab[platform]`` against it with no index at all must want nothing but h3lab itself:
    torch (the CPU build installed first) and every other extra are already satisfied."""
    report = tmp_path / "report.json"
    offline = ["--no-index", "--find-links", str(wheel.parent)]
    done = subprocess.run(
        [*PIP, "install", "--dry-run", *offline, "--report", str(report), "h3lab[platform]"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    wanted = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]]
    assert wanted == ["h3lab"]
