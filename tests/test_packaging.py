"""Packaging and the locked dependency set: what the wheel carries, what the locks pin, and the
web process staying free of torch (which is why the web image can be built without it).

The slower checks that install the wheel into fresh virtualenvs are in tests/e2e/test_install.py.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from email.parser import Parser
from pathlib import Path

import pytest

import h3lab
from h3lab import __main__ as cli
from h3lab import client
from scripts import audit
from tests.wheels import ROOT, TOP_PACKAGES, build_wheel, listed_packages, pyproject

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the package list -------------------------------------------------------------------------


def test_every_python_package_on_disk_is_listed_in_pyproject() -> None:
    assert {"h3lab", "vault", "experiments", "disclosure", "api", "web"} <= set(TOP_PACKAGES)
    on_disk = {
        str(init.parent.relative_to(ROOT)).replace(os.sep, ".")
        for top in TOP_PACKAGES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    missing = sorted(on_disk - set(listed_packages()))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_every_template_and_static_folder_is_listed_in_pyproject() -> None:
    package_dir: dict[str, str] = pyproject()["tool"]["setuptools"]["package-dir"]
    site = {folder: package for package, folder in package_dir.items()}
    needed = {"api.templates.api"}
    for folder in ("templates", "static"):
        for sub in [ROOT / folder, *(p for p in (ROOT / folder).rglob("*") if p.is_dir())]:
            rel = sub.relative_to(ROOT / folder).parts
            needed.add(".".join([site[folder], *rel]))
    missing = sorted(needed - set(listed_packages()))
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


# --- the wheel ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    with zipfile.ZipFile(build_wheel(tmp_path_factory.mktemp("wheel"))) as whl:
        yield whl


def dist_info(whl: zipfile.ZipFile, name: str) -> str:
    return whl.read(f"h3lab-{h3lab.__version__}.dist-info/{name}").decode()


def test_the_wheel_carries_every_module_migration_template_and_static_file(
    wheel: zipfile.ZipFile,
) -> None:
    names = set(wheel.namelist())
    expected: set[str] = set()
    for top in TOP_PACKAGES:
        expected |= {
            str(p.relative_to(ROOT))
            for p in (ROOT / top).rglob("*")
            if p.is_file() and p.suffix in {".py", ".html"} and "__pycache__" not in p.parts
        }
    for folder in ("templates", "static"):
        expected |= {
            f"h3lab/_site/{p.relative_to(ROOT)}" for p in (ROOT / folder).rglob("*") if p.is_file()
        }
    assert sorted(expected - names) == []
    assert "experiments/migrations/0001_initial.py" in names
    assert "h3lab/_site/templates/base.html" in names
    assert "h3lab/_site/static/h3lab/app.css" in names
    assert "api/templates/api/tokens.html" in names


def test_the_wheel_carries_the_demo_bundle(wheel: zipfile.ZipFile) -> None:
    bundle = ROOT / "experiments" / "demo_bundle"
    files = {str(p.relative_to(ROOT)) for p in bundle.rglob("*") if p.is_file()}
    assert "experiments/demo_bundle/manifest.json" in files
    assert sorted(files - set(wheel.namelist())) == []


def test_the_wheel_leaves_out_tests_scripts_and_local_state(wheel: zipfile.ZipFile) -> None:
    tops = {n.split("/")[0] for n in wheel.namelist()}
    assert tops == {*TOP_PACKAGES, f"h3lab-{h3lab.__version__}.dist-info"}


def test_the_wheel_declares_both_commands(wheel: zipfile.ZipFile) -> None:
    entry_points = dist_info(wheel, "entry_points.txt")
    assert "h3lab = h3lab.__main__:main" in entry_points
    assert "h3lab-client = h3lab.client:main" in entry_points


def test_the_bare_wheel_needs_nothing_and_the_platform_comes_in_extras(
    wheel: zipfile.ZipFile,
) -> None:
    meta = Parser().parsestr(dist_info(wheel, "METADATA"))
    assert meta["Version"] == h3lab.__version__
    assert meta["License-Expression"] == "Apache-2.0"
    requires = meta.get_all("Requires-Dist") or []
    unconditional = [r for r in requires if "extra ==" not in r]
    assert unconditional == []  # the client: standard library only
    assert set(meta.get_all("Provides-Extra") or []) == {"web", "ml", "platform"}
    torch = [r for r in requires if r.startswith("torch")]
    assert torch == ['torch<2.14,>=2.13; extra == "ml"']
    assert not any(r.startswith("torch") for r in requires if 'extra == "web"' in r)
    assert f"h3lab-{h3lab.__version__}.dist-info/licenses/LICENSE" in wheel.namelist()


# --- the commands -------------------------------------------------------------------------------


def test_both_commands_print_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith(f" {h3lab.__version__}")
    with pytest.raises(SystemExit) as exit_:
        client.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {h3lab.__version__}")


def test_the_ml_parser_also_answers_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().endswith(f" {h3lab.__version__}")


def test_the_client_and_the_cli_module_load_without_torch_or_django() -> None:
    code = (
        "import sys, h3lab.client, h3lab.__main__; h3lab.client.parser();"
        "print(sorted({'torch', 'django', 'numpy'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# --- the web process and torch ------------------------------------------------------------------


def test_the_web_process_serves_pages_and_submits_runs_without_importing_torch(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "CELERY_"))}
    env |= {"H3LAB_VAR_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    env.pop("H3LAB_BROKER_PREFIX", None)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "web_import_trace.py")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    trace = json.loads(done.stdout.strip().splitlines()[-1])
    assert trace["status"].pop("api-submit") == 201
    assert set(trace["status"].values()) == {200}
    assert trace["jobs_sent"] == 1
    assert trace["imported"] == dict.fromkeys(trace["imported"], False)


# --- the locks ----------------------------------------------------------------------------------


def lock(name: str) -> dict[str, tuple[str, int]]:
    """``{normalized name: (version, number of hashes)}`` of a pip-compile'd lock."""
    pins: dict[str, tuple[str, int]] = {}
    current = ""
    for line in (ROOT / name).read_text().splitlines():
        if match := PIN.match(line):
            current = normalize(match[1])
            pins[current] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            assert line.startswith(" "), f"{name}: not a hashed pin: {line!r}"
    return pins


def direct(name: str) -> dict[str, str]:
    """The ``name==version`` lines of a requirements .in file."""
    found: dict[str, str] = {}
    for line in (ROOT / name).read_text().splitlines():
        if match := PIN.match(line.replace("[binary]", "").replace("[compatible-mypy]", "")):
            found[normalize(match[1])] = match[2]
    return found


@pytest.mark.parametrize("name", ["requirements.txt", "requirements-dev.txt"])
def test_each_lock_pins_and_hashes_every_package_and_holds_no_torch(name: str) -> None:
    pins = lock(name)
    assert len(pins) > 50
    assert [p for p, (_, hashes) in pins.items() if hashes == 0] == []
    assert "torch" not in pins
    assert "pip-audit" in pins or name == "requirements.txt"


def test_the_dev_lock_holds_the_runtime_lock_at_the_same_versions() -> None:
    runtime, dev = lock("requirements.txt"), lock("requirements-dev.txt")
    differ = {p: (v, dev.get(p, ("missing",))[0]) for p, (v, _) in runtime.items()}
    assert {p: vs for p, vs in differ.items() if vs[0] != vs[1]} == {}


def test_the_locks_keep_the_versions_the_in_files_pin() -> None:
    pairs = [
        ("requirements.in", "requirements.txt"),
        ("requirements-dev.in", "requirements-dev.txt"),
    ]
    for source, locked in pairs:
        pins = lock(locked)
        assert len(direct(source)) >= 10
        assert {p: v for p, v in direct(source).items() if pins.get(p, ("",))[0] != v} == {}


def test_torch_is_pinned_once_outside_the_lock_in_step_with_the_ml_extra() -> None:
    lines = [
        line
        for line in (ROOT / "requirements-torch.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines == ["torch==2.13.0"]
    ml: list[str] = pyproject()["project"]["optional-dependencies"]["ml"]
    assert "torch>=2.13,<2.14" in ml


def test_the_extras_name_only_packages_the_lock_pins() -> None:
    extras = pyproject()["project"]["optional-dependencies"]
    pins = lock("requirements.txt")
    names = {
        normalize(re.split(r"[<>=\[;]", req)[0]) for group in ("web", "ml") for req in extras[group]
    }
    assert sorted(names - set(pins) - {"torch"}) == []


# --- the audit wrapper --------------------------------------------------------------------------


def test_the_audit_fails_on_a_known_vulnerability() -> None:
    report = {
        "dependencies": [
            {"name": "django", "version": "5.2.19", "vulns": []},
            {
                "name": "celery",
                "version": "5.7.0",
                "vulns": [{"id": "PYSEC-0000-1", "fix_versions": ["5.7.1"]}],
            },
        ]
    }
    verdict = audit.judge(report)
    assert verdict.code == audit.VULNERABLE
    assert verdict.lines == ["celery 5.7.0: PYSEC-0000-1 (fixed in 5.7.1)"]


def test_the_audit_reports_an_unreachable_service_as_not_run_rather_than_clean() -> None:
    skipped = {"name": "django", "skip_reason": "Dependency not found on PyPI and could not ..."}
    assert audit.judge({"dependencies": [skipped]}).code == audit.NOT_AUDITED
    assert audit.judge({"dependencies": []}).code == audit.NOT_AUDITED
    clean = {"name": "django", "version": "5.2.19", "vulns": []}
    assert audit.judge({"dependencies": [clean, skipped]}).code == audit.NOT_AUDITED
    assert audit.judge({"dependencies": [clean]}).code == audit.CLEAN
