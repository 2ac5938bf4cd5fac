"""The direction of dependence (design.md), checked on the source without importing it.

``vault`` sits below both apps; ``experiments`` below ``disclosure``; both below the ``api``
and ``web`` front ends. The ML core (``h3lab/nn``, ``h3lab/data`` and the pure modules) never
imports Django, Celery or the platform, and the data package nothing above it. Celery tasks
are defined only in the bridge, ``h3lab/jobs.py``. Every ``import`` counts, including lazy ones
inside functions and ``TYPE_CHECKING`` blocks, and ``importlib.import_module("…")`` with a
literal name.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", "venv", "var", "node_modules", "static", "media", "__pycache__"}
BRIDGE = "h3lab/jobs.py"

# The ML core: pure PyTorch and plain Python. Each file here was read for a Django-free
# import list when the rule was written; a new pure module belongs in this list.
ML_CORE_PACKAGES = ("h3lab/nn/", "h3lab/data/")
ML_CORE_MODULES = frozenset(
    f"h3lab/{name}.py"
    for name in (
        "train",
        "probes",
        "checkpoint",
        "curves",
        "reproduce",
        "bench",
        "config",
        "__main__",
        "client",
    )
)
PLATFORM = (
    "django",
    "celery",
    "kombu",
    "rest_framework",
    "experiments",
    "disclosure",
    "api",
    "web",
    # the Django/Celery wiring that shares the h3lab package with the ML core
    "h3lab.jobs",
    "h3lab.settings",
    "h3lab.celery",
    "h3lab.urls",
    "h3lab.wsgi",
    "h3lab.apps",
    "h3lab.checks",
)


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


@dataclass(frozen=True)
class Rule:
    """``applies_to(path)`` selects the modules (by repository path); ``forbids(module)`` the
    imports they may not make (by dotted module name)."""

    name: str
    applies_to: Callable[[str], bool]
    forbids: Callable[[str], bool]


def _under(*prefixes: str) -> Callable[[str], bool]:
    """Module names equal to, or inside, any of ``prefixes``."""
    return lambda name: any(name == p or name.startswith(p + ".") for p in prefixes)


def _in_package(*packages: str) -> Callable[[str], bool]:
    return lambda path: any(path.startswith(p + "/") for p in packages)


def _is_ml_core(path: str) -> bool:
    return path.startswith(ML_CORE_PACKAGES) or path in ML_CORE_MODULES


def _above_data(name: str) -> bool:
    """Any h3lab module outside h3lab.data (the bare package ``h3lab`` is only a docstring)."""
    return name.startswith("h3lab.") and not _under("h3lab.data")(name)


RULES: tuple[Rule, ...] = (
    Rule(
        "experiments sits below disclosure, api and web",
        _in_package("experiments"),
        _under("disclosure", "api", "web"),
    ),
    Rule("disclosure sits below api and web", _in_package("disclosure"), _under("api", "web")),
    Rule(
        "vault sits below both apps and the project",
        _in_package("vault"),
        _under("experiments", "disclosure", "api", "web", "h3lab"),
    ),
    Rule(
        "the ML core never imports Django, Celery or the platform",
        _is_ml_core,
        _under(*PLATFORM),
    ),
    Rule(
        "the data package imports nothing above it (it owns its TaskConfig)",
        lambda path: path.startswith("h3lab/data/"),
        _above_data,
    ),
)
TASK_RULE = f"Celery tasks are defined only in the bridge, {BRIDGE}"


def module_name(path: str) -> str:
    """``experiments/actions.py`` → ``experiments.actions``; a package's ``__init__`` → the
    package."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(tree: ast.AST, path: str) -> Iterator[tuple[int, str]]:
    """Every module the source imports, with its line: ``from a import b`` yields ``a`` and
    ``a.b`` (``b`` may be a module); relative imports are resolved against ``path``."""
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package = package[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{base}.{alias.name}"
        elif isinstance(node, ast.Call) and _callee(node.func) in ("import_module", "__import__"):
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                yield node.lineno, first.value


def _callee(func: ast.expr) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _registers_task(node: ast.expr) -> bool:
    """``shared_task``, ``app.task``, ``celery_app.task`` … as a decorator (called or not) or
    a call, and ``app.register_task(…)``."""
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name):
        return target.id == "shared_task"
    if isinstance(target, ast.Attribute):
        return target.attr in ("task", "shared_task", "register_task")
    return False


def task_definitions(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                if _registers_task(decorator):
                    yield decorator.lineno, f"{ast.unparse(decorator)[:60]} on {node.name}"
        elif isinstance(node, ast.Call) and _registers_task(node) and node.args:
            yield node.lineno, ast.unparse(node)[:60]


def check_source(source: str, path: str) -> list[Violation]:
    """Every rule broken by ``source``, read as the module at repository path ``path``."""
    tree = ast.parse(source, filename=path)
    found: list[Violation] = []
    for rule in RULES:
        if not rule.applies_to(path):
            continue
        for line, name in imports(tree, path):
            if rule.forbids(name):
                found.append(Violation(path, line, rule.name, f"imports {name}"))
    if path != BRIDGE:
        for line, what in task_definitions(tree):
            found.append(Violation(path, line, TASK_RULE, f"defines a task: {what}"))
    # One report per line and rule: ``from disclosure import policy`` is one finding.
    return list({(v.line, v.rule): v for v in found}.values())


def python_files(root: Path = ROOT) -> Iterator[str]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        yield rel.as_posix()


def check_tree(root: Path = ROOT) -> list[Violation]:
    found: list[Violation] = []
    for path in python_files(root):
        found += check_source((root / path).read_text(encoding="utf-8"), path)
    return found


# --- the tree -----------------------------------------------------------------------------------


def test_the_tree_keeps_the_direction_of_dependence() -> None:
    violations = check_tree()
    assert not violations, "\n" + "\n".join(map(str, violations))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_rule_reads_some_of_the_tree(rule: Rule) -> None:
    """A rule whose paths match nothing (a package renamed) would pass without checking."""
    assert any(rule.applies_to(path) for path in python_files())


def test_the_ml_core_files_named_in_the_rule_exist() -> None:
    missing = [p for p in ML_CORE_MODULES | {BRIDGE} if not (ROOT / p).is_file()]
    assert missing == []


def test_the_bridge_defines_the_tasks() -> None:
    source = (ROOT / BRIDGE).read_text(encoding="utf-8")
    assert len(list(task_definitions(ast.parse(source)))) >= 5


# --- the checker itself -------------------------------------------------------------------------


def _rules(source: str, path: str) -> list[tuple[int, str]]:
    return [(v.line, v.rule) for v in check_source(source, path)]


def test_a_lazy_import_upwards_is_caught_with_file_line_and_rule() -> None:
    source = "import json\n\n\ndef f():\n    from disclosure import policy\n    return policy\n"
    [violation] = check_source(source, "experiments/views.py")
    assert str(violation) == (
        "experiments/views.py:5: experiments sits below disclosure, api and web: "
        "imports disclosure.policy"
    )


EXPERIMENTS, DISCLOSURE, VAULT, ML_CORE, DATA = (r.name for r in RULES)
TASK = "@shared_task\ndef t(): ...\n"


@pytest.mark.parametrize(
    ("path", "source", "rule"),
    [
        ("experiments/x.py", "import api.views\n", EXPERIMENTS),
        ("experiments/x.py", "from web import views\n", EXPERIMENTS),
        ("disclosure/x.py", "from api.serializers import S\n", DISCLOSURE),
        ("disclosure/actions/x.py", "from ...web import views\n", DISCLOSURE),
        ("vault/x.py", "from h3lab import settings\n", VAULT),
        ("vault/x.py", "from experiments.models import Run\n", VAULT),
        ("h3lab/train.py", "def f():\n    import django\n", ML_CORE),
        ("h3lab/nn/x.py", "from celery import shared_task as s\n", ML_CORE),
        ("h3lab/client.py", "from h3lab import jobs\n", ML_CORE),
        ("h3lab/probes.py", "importlib.import_module('h3lab.settings')\n", ML_CORE),
        ("h3lab/data/x.py", "from h3lab.config import TaskConfig\n", DATA),
        ("h3lab/data/x.py", "from ..config import TaskConfig\n", DATA),
        ("disclosure/tasks.py", "from celery import shared_task\n" + TASK, TASK_RULE),
        ("experiments/x.py", "@app.task(name='x')\ndef t(): ...\n", TASK_RULE),
        ("web/x.py", "@celery_app.task\ndef t(): ...\n", TASK_RULE),
        ("api/x.py", "def t(): ...\nt = shared_task(t)\n", TASK_RULE),
    ],
)
def test_each_rule_catches_a_planted_violation(path: str, source: str, rule: str) -> None:
    assert rule in {r for _, r in _rules(source, path)}


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("disclosure/x.py", "from experiments.models import Finding\nfrom vault import crypto\n"),
        ("experiments/x.py", "from vault import keystore\nfrom h3lab.config import RunConfig\n"),
        ("h3lab/config.py", "from h3lab.data.config import TaskConfig\n"),
        ("h3lab/data/datasets.py", "from h3lab.data.config import TaskConfig\nimport torch\n"),
        ("h3lab/data/x.py", "from .config import TaskConfig\nfrom . import synthetic\n"),
        ("h3lab/jobs.py", "from h3lab.celery import app\n" + TASK),
        ("api/x.py", "from disclosure import policy\nfrom experiments import actions\n"),
        ("tests/x.py", "import django\nfrom api import views\n"),
    ],
)
def test_what_the_direction_allows_passes(path: str, source: str) -> None:
    assert check_source(source, path) == []
