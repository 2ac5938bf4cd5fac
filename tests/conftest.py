"""Shared fixtures: the personas every permission test uses.

- ``alice``: researcher, member of the ``induction`` project
- ``bob``: researcher in another project (``recall``)
- ``charlie``: signed-in outsider with no project
- anonymous: the plain ``client`` fixture
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.contrib.auth.models import User
from django.test import Client

from experiments.models import Project
from tests import factories


@dataclass
class Lab:
    alice: User
    bob: User
    charlie: User
    project: Project
    other_project: Project


@pytest.fixture
def lab(db: None) -> Lab:
    alice = factories.make_user("alice")
    bob = factories.make_user("bob")
    charlie = factories.make_user("charlie")
    project = factories.make_project("induction", members=[alice])
    other = factories.make_project("recall", members=[bob])
    return Lab(alice=alice, bob=bob, charlie=charlie, project=project, other_project=other)


def login(user: User) -> Client:
    c = Client()
    c.force_login(user)
    return c


@pytest.fixture
def as_alice(lab: Lab) -> Client:
    return login(lab.alice)


@pytest.fixture
def as_bob(lab: Lab) -> Client:
    return login(lab.bob)


@pytest.fixture
def as_charlie(lab: Lab) -> Client:
    return login(lab.charlie)


@pytest.fixture(autouse=True)
def _isolated_storage(settings: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Artifacts and run workdirs go to a per-test temporary directory."""
    root = tmp_path_factory.mktemp("h3lab-data")
    settings.MEDIA_ROOT = root  # type: ignore[attr-defined]
    settings.RUNS_DIR = root / "runs"  # type: ignore[attr-defined]
    settings.ARTIFACTS_DIR = root / "artifacts"  # type: ignore[attr-defined]
