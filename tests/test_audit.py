"""The hash-chained audit log: appends, tamper detection, verify_audit, the PostgreSQL trigger."""

from __future__ import annotations

import itertools

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

from disclosure import audit
from disclosure.models import AuditEntry
from experiments.actions.projects import do_add_project_member
from experiments.signals import governed_change
from tests import factories
from tests.attacks import superuser
from tests.conftest import Lab

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain(lab: Lab) -> list[AuditEntry]:
    for i in range(5):
        audit.record(lab.alice, "test.event", lab.project, new={"i": i}, ip="10.0.0.1")
    return list(AuditEntry.objects.order_by("id"))


def raw(sql: str, *params: int | str) -> None:
    with connection.cursor() as cur:
        cur.execute(sql, params)


def verify_fails_at(entry_id: int) -> str:
    with pytest.raises(CommandError) as err:
        call_command("verify_audit")
    assert f"entry #{entry_id}" in str(err.value)
    return str(err.value)


def test_experiments_governed_changes_are_chained_into_the_log(lab: Lab) -> None:
    entries = list(AuditEntry.objects.order_by("id"))
    # each project is created with its first member (membership is audited too)
    assert [e.action for e in entries][:4] == [
        "project.create",
        "project.add_member",
        "project.create",
        "project.add_member",
    ]
    assert entries[0].prev_hash == audit.GENESIS
    assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(entries))
    assert audit.verify() == (len(entries), None)


def test_a_download_announced_by_the_web_ui_is_recorded_with_its_ip(lab: Lab) -> None:
    run = factories.make_run(lab.project)
    from experiments.models import Artifact

    art = Artifact.objects.create(
        run=run,
        project=run.project,
        name="m.json",
        kind="metrics",
        path="x",
        size=1,
        sha256="0" * 64,
    )
    governed_change.send(
        sender=Artifact, actor=lab.bob, action="artifact.download", obj=art, ip="10.1.2.3"
    )
    entry = AuditEntry.objects.latest("id")
    assert (entry.action, entry.actor_name, entry.ip, entry.object_id) == (
        "artifact.download",
        "bob",
        "10.1.2.3",
        str(art.pk),
    )


def test_an_intact_chain_verifies(
    chain: list[AuditEntry], capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("verify_audit")
    assert "intact" in capsys.readouterr().out


def test_editing_an_entry_is_detected(chain: list[AuditEntry]) -> None:
    with superuser():
        raw("UPDATE disclosure_auditentry SET new = %s WHERE id = %s", '{"i": 99}', chain[3].pk)
    assert "edited" in verify_fails_at(chain[3].pk)


def test_deleting_an_entry_is_detected(chain: list[AuditEntry]) -> None:
    with superuser():
        raw("DELETE FROM disclosure_auditentry WHERE id = %s", chain[2].pk)
    assert "missing" in verify_fails_at(chain[2].pk)


def test_deleting_the_newest_entries_is_detected(chain: list[AuditEntry]) -> None:
    with superuser():
        raw("DELETE FROM disclosure_auditentry WHERE id >= %s", chain[-2].pk)
    assert "deleted" in verify_fails_at(chain[-2].pk)


def test_reordering_entries_is_detected(chain: list[AuditEntry]) -> None:
    a, b = chain[-3].pk, chain[-2].pk
    # Swap the positions of two entries (each keeps its own content and hashes).
    with superuser():
        raw("UPDATE disclosure_auditentry SET id = -1 WHERE id = %s", a)
        raw("UPDATE disclosure_auditentry SET id = %s WHERE id = %s", a, b)
        raw("UPDATE disclosure_auditentry SET id = %s WHERE id = -1", b)
    assert "reordered" in verify_fails_at(a)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="trigger exists on PostgreSQL only")
def test_postgresql_refuses_update_and_delete_on_the_log(chain: list[AuditEntry]) -> None:
    for sql in (
        "UPDATE disclosure_auditentry SET action = 'x'",
        "DELETE FROM disclosure_auditentry",
    ):
        with pytest.raises(DatabaseError), transaction.atomic():
            raw(sql)
    assert audit.verify()[1] is None


def test_an_action_that_rolls_back_leaves_no_entry(lab: Lab) -> None:
    before = AuditEntry.objects.count()
    with pytest.raises(RuntimeError), transaction.atomic():
        do_add_project_member(lab.project, lab.charlie, acting_user=lab.alice)
        raise RuntimeError
    assert AuditEntry.objects.count() == before
    assert audit.verify()[1] is None
