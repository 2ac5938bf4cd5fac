"""Shared fixtures: the personas every permission test uses.

- ``alice``: researcher, member of the ``induction`` project
- ``bob``: researcher in another project (``recall``)
- ``charlie``: signed-in outsider with no project
- anonymous: the plain ``client`` fixture
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from disclosure import policy
from experiments.models import Finding, Project
from tests import factories

if TYPE_CHECKING:
    from disclosure.models import AgreementVersion

# The suite imports h3lab.wsgi (API schema tests) where no database is reachable yet; the
# master-key check at start is tested in subprocesses (tests/test_master_key_fingerprints.py).
os.environ.setdefault("H3LAB_CHECK_KEYS_AT_START", "0")


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


def login(user: User, client: Client | None = None) -> Client:
    """A client signed in as ``user``. Someone who must pass a second factor
    (:func:`disclosure.policy.requires_second_factor`) gets a confirmed TOTP device and a
    session that has passed it, as after the verification step."""
    c = client if client is not None else Client()
    c.force_login(user)
    if policy.requires_second_factor(user):
        verify_second_factor(c, user)
    return c


def verify_second_factor(client: Client, user: User) -> None:
    """Mark ``client``'s session verified with ``user``'s test device (what ``django_otp.login``
    stores after a good code)."""
    from django_otp import DEVICE_ID_SESSION_KEY
    from django_otp.plugins.otp_totp.models import TOTPDevice

    device, _ = TOTPDevice.objects.get_or_create(
        user=user, name="test device", defaults={"confirmed": True}
    )
    session = client.session
    session[DEVICE_ID_SESSION_KEY] = device.persistent_id
    session.save()


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
    settings.EXPORTS_DIR = root / "exports"  # type: ignore[attr-defined]
    settings.H3LAB_AUDIT_CHECKPOINT_DIR = root / "audit-checkpoints"  # type: ignore[attr-defined]
    settings.H3LAB_AUDIT_KEY = ""  # type: ignore[attr-defined]
    settings.H3LAB_AUDIT_KEY_FILE = str(root / "audit-checkpoint.key")  # type: ignore[attr-defined]
    settings.H3LAB_AUDIT_PUBLIC_KEYS = []  # type: ignore[attr-defined]


@pytest.fixture(scope="session", autouse=True)
def _flush_past_the_audit_truncate_guard() -> Iterator[None]:
    """Transactional tests empty the database with TRUNCATE, which PostgreSQL refuses on the
    audit tables (migration 0007). The test database's superuser flushes in replica mode, in
    which ordinary triggers do not fire (only a superuser may set it; the app's role cannot)."""
    try:
        from django.db.backends.postgresql.operations import DatabaseOperations
    except ImportError:  # no PostgreSQL driver: the SQLite run has no such trigger
        yield
        return
    original = DatabaseOperations.sql_flush

    def sql_flush(self: Any, style: Any, tables: Any, **kwargs: Any) -> list[str]:
        statements: list[str] = original(self, style, tables, **kwargs)
        if not statements:
            return statements
        return ["SET LOCAL session_replication_role = replica", *statements]

    DatabaseOperations.sql_flush = sql_flush  # type: ignore[method-assign]
    yield
    DatabaseOperations.sql_flush = original  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def test_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Jobs sent during tests go to a broker namespace of this session only: a temporary folder
    for the embedded filesystem broker, a unique key prefix on a shared Redis. Never the
    developer's ``var/broker`` (a running ``make run`` worker would pick test jobs up).

    Returns the environment a worker subprocess needs to consume from the same place.
    """
    import uuid

    from h3lab.celery import app, ensure_embedded_dirs

    env: dict[str, str] = {}
    if str(app.conf.broker_url).startswith("filesystem://"):
        root = tmp_path_factory.mktemp("broker")
        app.conf.broker_transport_options = {
            **(app.conf.broker_transport_options or {}),
            "data_folder_in": str(root / "queue"),
            "data_folder_out": str(root / "queue"),
            "control_folder": str(root / "control"),
        }
        backend = f"file://{root / 'results'}"
        conf: Any = app.conf
        conf.result_backend = backend
        env.update(H3LAB_BROKER_DIR=str(root), CELERY_RESULT_BACKEND=backend)
    else:
        prefix = f"h3lab-test-{uuid.uuid4().hex[:12]}:"
        app.conf.broker_transport_options = {
            **(app.conf.broker_transport_options or {}),
            "global_keyprefix": prefix,
        }
        env["H3LAB_BROKER_PREFIX"] = prefix
    ensure_embedded_dirs(app.conf)
    yield env
    if "H3LAB_BROKER_PREFIX" in env:  # leave nothing behind on a shared Redis
        import redis

        client = redis.Redis.from_url(str(app.conf.broker_url))
        for key in client.scan_iter(match=env["H3LAB_BROKER_PREFIX"] + "*"):
            client.delete(key)
        client.close()


# --- disclosure personas (one per role and grant state) ----------------------------------------


@dataclass
class Cast:
    """The disclosure roles around ``lab.project`` (alice's team), on top of :class:`Lab`.

    - ``rita``: review board; ``rex``: review board, recused from ``recused_from`` findings
    - ``mara``: release manager
    - ``carol``: collaborator with a current grant on the project, accepted the current agreement
    - ``erin``: collaborator whose grant has expired
    - ``nick``: collaborator with a current grant who accepted only the previous agreement
    """

    lab: Lab
    rita: User
    rex: User
    mara: User
    carol: User
    erin: User
    nick: User
    agreement: AgreementVersion

    def recuse(self, finding: Finding) -> None:
        from disclosure.models import Recusal

        Recusal.objects.create(finding=finding, reviewer=self.rex, reason="co-author")


@pytest.fixture
def cast(lab: Lab) -> Cast:
    return factories.make_cast(lab)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: object) -> None:
    """PBKDF2 costs ~0.3 s per user on the CI machine; tests only need *a* hash."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # type: ignore[attr-defined]
