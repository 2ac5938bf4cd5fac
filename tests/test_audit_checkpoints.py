"""An audit chain a database superuser cannot rewrite unnoticed (issue 12, item 5).

Each attack of the issue is played as a superuser would: on PostgreSQL with every trigger off
(``session_replication_role = replica``, superuser only), on SQLite directly. The hash chain
alone cannot see an attacker who recomputes it; a signed checkpoint taken before the attack,
whose key is outside the database, does.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction
from django.http import StreamingHttpResponse
from django.urls import reverse

from disclosure import audit
from disclosure.models import AuditEntry, AuditHead
from h3lab.celery import _beat_schedule
from h3lab.jobs import write_audit_checkpoint
from tests.attacks import raw, superuser
from tests.conftest import Cast, Lab, login
from vault import checkpoint, merkle

pytestmark = pytest.mark.django_db

PG = connection.vendor == "postgresql"
pg_only = pytest.mark.skipif(not PG, reason="SQLite has no TRUNCATE, triggers on it or roles")


@pytest.fixture
def log(lab: Lab) -> list[AuditEntry]:
    for i in range(6):
        audit.record(lab.alice, "test.event", lab.project, new={"i": i}, ip="10.0.0.1")
    return list(AuditEntry.objects.order_by("id"))


def take_checkpoint() -> Path:
    out = io.StringIO()
    call_command("audit_checkpoint", stdout=out)
    assert "written to" in out.getvalue()
    return max(audit.checkpoint_dir().glob("checkpoint-*.json"))


def verify_audit(*args: str) -> str:
    out = io.StringIO()
    call_command("verify_audit", *args, stdout=out)
    return out.getvalue()


def verify_audit_fails(*args: str) -> str:
    with pytest.raises(CommandError) as err:
        call_command("verify_audit", *args, stdout=io.StringIO())
    return str(err.value)


def rewrite_from(entry_id: int, new: dict[str, int] | None = None) -> None:
    """The superuser's forgery: change entry ``entry_id`` (optional) and recompute every hash
    from it on, and the head, so that the chain is consistent again."""
    with superuser():
        if new is not None:
            raw(
                "UPDATE disclosure_auditentry SET new = %s WHERE id = %s", json.dumps(new), entry_id
            )
        prev = AuditEntry.objects.get(pk=entry_id - 1).hash if entry_id > 1 else audit.GENESIS
        for entry in AuditEntry.objects.filter(id__gte=entry_id).order_by("id"):
            entry.prev_hash = prev
            prev = audit.entry_hash(prev, entry)
            raw(
                "UPDATE disclosure_auditentry SET prev_hash = %s, hash = %s WHERE id = %s",
                entry.prev_hash,
                prev,
                entry.pk,
            )
        raw("UPDATE disclosure_audithead SET last_hash = %s WHERE id = 1", prev)


def test_an_entry_edited_with_its_hash_recomputed_is_named_itself_not_its_successor(
    log: list[AuditEntry],
) -> None:
    target = log[2]
    with superuser():
        raw("UPDATE disclosure_auditentry SET new = %s WHERE id = %s", '{"i": 99}', target.pk)
        edited = AuditEntry.objects.get(pk=target.pk)
        raw(
            "UPDATE disclosure_auditentry SET hash = %s WHERE id = %s",
            audit.entry_hash(edited.prev_hash, edited),
            target.pk,
        )
    message = verify_audit_fails()
    assert f"entry #{target.pk}: rewritten" in message
    assert f"({target.pk - 1} entries verified before it)" in message


def test_the_newest_entry_edited_with_its_hash_recomputed_is_named_by_the_head(
    log: list[AuditEntry],
) -> None:
    last = log[-1]
    with superuser():
        raw("UPDATE disclosure_auditentry SET ip = '10.6.6.6' WHERE id = %s", last.pk)
        edited = AuditEntry.objects.get(pk=last.pk)
        new_hash = audit.entry_hash(edited.prev_hash, edited)
        raw("UPDATE disclosure_auditentry SET hash = %s WHERE id = %s", new_hash, last.pk)
    assert f"entry #{last.pk}: rewritten" in verify_audit_fails()


@pytest.mark.parametrize("head", ["deleted", "moved back"])
def test_a_head_deleted_or_moved_back_over_remaining_entries_is_detected(
    log: list[AuditEntry], head: str
) -> None:
    with superuser():
        if head == "deleted":
            raw("DELETE FROM disclosure_audithead")
        else:
            raw("UPDATE disclosure_audithead SET last_id = %s, last_hash = %s", 3, log[2].hash)
    start = 1 if head == "deleted" else 4
    message = verify_audit_fails()
    assert f"entry #{start}: entries up to #{log[-1].pk} lie past the recorded head" in message


def test_an_entry_edited_without_its_hash_is_named_itself(log: list[AuditEntry]) -> None:
    with superuser():
        raw("UPDATE disclosure_auditentry SET actor_name = 'mallory' WHERE id = %s", log[3].pk)
    assert f"entry #{log[3].pk}: content does not match its hash (edited)" in verify_audit_fails()


def test_a_chain_forged_from_one_entry_on_is_caught_by_an_earlier_checkpoint_and_located(
    log: list[AuditEntry],
) -> None:
    take_checkpoint()  # covers the lab fixture's entries and the six events
    first = log[-1].pk
    audit.record(None, "test.later", None)
    audit.record(None, "test.later", None)
    take_checkpoint()
    rewrite_from(first + 1, new={"forged": 1})
    # the chain alone is consistent again: only a checkpoint can tell
    assert audit.verify(checkpoints=[]) == (first + 2, None)
    message = verify_audit_fails()
    assert f"entry #{first + 1}: history rewritten: entries #{first + 1}..#{first + 2}" in message
    assert f"entries up to #{first} match" in message


def test_one_checkpoint_locates_a_rewrite_within_a_subtree_of_its_signed_merkle_edge(
    log: list[AuditEntry],
) -> None:
    for _ in range(16 - log[-1].pk - 1):
        audit.record(None, "test.later", None)
    take_checkpoint()  # 15 entries: subtrees #1..#8, #9..#12, #13..#14, #15
    rewrite_from(10, new={"forged": 10})
    message = verify_audit_fails()
    assert "entry #9: history rewritten: entries #9..#12 no longer match" in message
    assert "entries up to #8 match" in message


def test_a_checkpoint_kept_elsewhere_proves_it_after_the_folder_is_deleted(
    log: list[AuditEntry], tmp_path: Path
) -> None:
    kept = tmp_path / "kept.json"
    shutil.copy(take_checkpoint(), kept)
    rewrite_from(2, new={"forged": 2})
    shutil.rmtree(audit.checkpoint_dir())  # the attacker also removes the stored checkpoints
    assert "intact" in verify_audit()
    assert "entry #1: history rewritten: entries #1..#" in verify_audit_fails(
        "--checkpoint", str(kept)
    )


def test_deleting_the_tail_and_moving_the_head_back_is_caught_by_a_checkpoint(
    log: list[AuditEntry],
) -> None:
    take_checkpoint()
    keep = log[2]
    with superuser():
        raw("DELETE FROM disclosure_auditentry WHERE id > %s", keep.pk)
        raw(
            "UPDATE disclosure_audithead SET last_id = %s, last_hash = %s WHERE id = 1",
            keep.pk,
            keep.hash,
        )
    assert audit.verify(checkpoints=[]) == (keep.pk, None)
    message = verify_audit_fails()
    assert f"entry #{keep.pk + 1}: missing: checkpoint" in message
    assert f"covers {log[-1].pk} entries but the log has {keep.pk}" in message


def test_deleting_everything_is_caught_by_a_checkpoint(log: list[AuditEntry]) -> None:
    take_checkpoint()
    with superuser():
        if PG:
            raw("TRUNCATE disclosure_auditentry, disclosure_audithead")
        else:
            raw("DELETE FROM disclosure_auditentry")
            raw("DELETE FROM disclosure_audithead")
    assert audit.verify(checkpoints=[]) == (0, None)
    assert "entry #1: missing: checkpoint" in verify_audit_fails()


def test_an_edited_or_foreign_checkpoint_is_refused_and_a_pinned_old_key_is_accepted(
    log: list[AuditEntry], tmp_path: Path
) -> None:
    path = take_checkpoint()
    cp = checkpoint.Checkpoint.from_json(path.read_text())
    edited = tmp_path / "edited.json"
    edited.write_text(path.read_text().replace(f'"tree_size": {cp.tree_size}', '"tree_size": 1'))
    assert "signature does not verify" in verify_audit_fails("--checkpoint", str(edited))
    other = Ed25519PrivateKey.generate()
    foreign = checkpoint.sign(
        other, tree_size=cp.tree_size, root_hash=cp.root_hash, head_hash=cp.head_hash,
        created=cp.created,
    )  # fmt: skip
    (tmp_path / "foreign.json").write_text(foreign.to_json())
    assert "not a trusted checkpoint key" in verify_audit_fails(
        "--checkpoint", str(tmp_path / "foreign.json")
    )
    (tmp_path / "old.pem").write_bytes(checkpoint.public_key_pem(other.public_key()))
    assert "intact" in verify_audit(
        "--checkpoint", str(tmp_path / "foreign.json"), "--public-key", str(tmp_path / "old.pem")
    )
    # a forged file dropped into the checkpoint folder is itself an alarm
    shutil.copy(edited, audit.checkpoint_dir() / "checkpoint-000000000001-x.json")
    assert "signature does not verify" in verify_audit_fails()


def test_no_checkpoint_is_signed_for_a_log_that_does_not_verify(log: list[AuditEntry]) -> None:
    with superuser():
        raw("UPDATE disclosure_auditentry SET action = 'x' WHERE id = %s", log[1].pk)
    with pytest.raises(CommandError, match=f"no checkpoint signed.*entry #{log[1].pk}"):
        call_command("audit_checkpoint", stdout=io.StringIO())
    assert not list(audit.checkpoint_dir().glob("checkpoint-*.json"))
    assert write_audit_checkpoint().startswith("refused:")


def test_a_checkpoint_is_written_again_only_when_the_log_has_grown(log: list[AuditEntry]) -> None:
    take_checkpoint()
    out = io.StringIO()
    call_command("audit_checkpoint", stdout=out)
    assert "already stored" in out.getvalue()
    audit.record(None, "test.later", None)
    assert write_audit_checkpoint().startswith(f"{log[-1].pk + 1} entries: ")
    assert len(list(audit.checkpoint_dir().glob("checkpoint-*.json"))) == 2
    schedule = _beat_schedule()["write-audit-checkpoint"]
    assert schedule["task"] == write_audit_checkpoint.name


def test_verify_audit_says_what_no_checkpoint_covers_yet_and_warns_when_the_newest_is_stale(
    log: list[AuditEntry], settings: Any
) -> None:
    take_checkpoint()
    audit.record(None, "test.later", None)
    out = verify_audit()
    assert "1 entries after the newest checkpoint are not covered by one yet" in out
    assert "warning" not in out
    settings.H3LAB_AUDIT_CHECKPOINT_INTERVAL_S = 0.0001
    time.sleep(0.01)
    assert "warning: the newest checkpoint is" in verify_audit()


def test_the_key_stays_outside_the_database_in_a_private_file(
    log: list[AuditEntry], settings: Any
) -> None:
    take_checkpoint()
    key_file = Path(settings.H3LAB_AUDIT_KEY_FILE)
    assert key_file.stat().st_mode & 0o777 == 0o600
    pem = key_file.read_text()
    assert "PRIVATE KEY" in pem
    public = io.StringIO()
    call_command("audit_checkpoint", "--public-key", stdout=public)
    assert public.getvalue().startswith("-----BEGIN PUBLIC KEY-----")
    assert not AuditEntry.objects.filter(new__icontains="PRIVATE KEY").exists()


def test_proofs_show_an_entry_is_in_the_log_and_a_checkpoint_extends_the_previous(
    log: list[AuditEntry],
) -> None:
    take_checkpoint()
    audit.record(None, "test.later", None)
    out = io.StringIO()
    call_command("audit_checkpoint", "--prove", str(log[1].pk), stdout=out)
    proof = json.loads(out.getvalue())
    head = checkpoint.Checkpoint.from_json(max(audit.checkpoint_dir().glob("*.json")).read_text())
    assert (proof["tree_size"], proof["root_hash"]) == (head.tree_size, head.root_hash)
    leaf = audit.leaf(log[1])
    assert proof["leaf_hash"] == leaf.hex()
    path = [bytes.fromhex(h) for h in proof["inclusion_proof"]]
    root = bytes.fromhex(head.root_hash)
    assert merkle.verify_inclusion(log[1].pk - 1, head.tree_size, leaf, path, root) is True
    previous = proof["previous_checkpoint"]
    assert previous["tree_size"] == log[-1].pk
    consistency = [bytes.fromhex(h) for h in proof["consistency_proof"]]
    assert merkle.verify_consistency(
        previous["tree_size"], head.tree_size, bytes.fromhex(previous["root_hash"]), root,
        consistency,
    ) is True  # fmt: skip


def test_the_audit_csv_ends_with_a_checkpoint_that_verify_audit_accepts(
    cast: Cast, tmp_path: Path
) -> None:
    response = login(cast.mara).get(reverse("audit-export"))
    assert isinstance(response, StreamingHttpResponse)
    csv_file = tmp_path / "h3lab-audit.csv"
    csv_file.write_bytes(b"".join(response.streaming_content))
    last = csv_file.read_text().splitlines()[-1]
    assert last.startswith(checkpoint.CSV_MARKER)
    cp = checkpoint.extract(csv_file.read_text())
    assert cp.tree_size == AuditEntry.objects.count()  # its own audit.export entry included
    shutil.rmtree(audit.checkpoint_dir())
    assert "matches 1 signed checkpoint" in verify_audit("--checkpoint", str(csv_file))
    rewrite_from(3, new={"forged": 3})
    assert "history rewritten" in verify_audit_fails("--checkpoint", str(csv_file))


def test_the_audit_page_shows_the_newest_signed_checkpoint(cast: Cast) -> None:
    mara = login(cast.mara)
    assert b"No signed checkpoint of this log yet" in mara.get(reverse("audit")).content
    cp = checkpoint.Checkpoint.from_json(take_checkpoint().read_text())
    page = mara.get(reverse("audit")).content.decode()
    assert f"entries 1–{cp.tree_size} as of {cp.created}" in page and cp.key_id in page


# --- PostgreSQL: what the database itself refuses ------------------------------------------------


@pg_only
def test_postgresql_refuses_truncate_of_the_log_and_of_its_head(log: list[AuditEntry]) -> None:
    for table in ("disclosure_auditentry", "disclosure_audithead"):
        with pytest.raises(DatabaseError, match="TRUNCATE refused"), transaction.atomic():
            raw(f"TRUNCATE {table}")
    assert audit.verify() == (log[-1].pk, None)


@pg_only
@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM disclosure_audithead",
        "UPDATE disclosure_audithead SET last_id = last_id - 1",
        "UPDATE disclosure_audithead SET last_id = last_id + 1",
        "UPDATE disclosure_audithead SET last_hash = repeat('a', 64)",
        "UPDATE disclosure_audithead SET id = 2",
    ],
)
def test_postgresql_refuses_moving_or_deleting_the_head(log: list[AuditEntry], sql: str) -> None:
    with pytest.raises(DatabaseError, match="audit head"), transaction.atomic():
        raw(sql)
    assert AuditHead.objects.get().last_id == log[-1].pk


@pg_only
def test_postgresql_creates_the_head_only_at_the_end_of_the_log(log: list[AuditEntry]) -> None:
    with superuser():
        raw("DELETE FROM disclosure_audithead")
    with pytest.raises(DatabaseError, match="end of the log"), transaction.atomic():
        raw("INSERT INTO disclosure_audithead VALUES (1, 0, repeat('0', 64))")
    last = log[-1]
    raw("INSERT INTO disclosure_audithead VALUES (1, %s, %s)", last.pk, last.hash)  # a restore
    audit.record(None, "test.after_restore", None)
    assert audit.verify() == (last.pk + 1, None)


def test_every_export_bundle_embeds_a_checkpoint_that_verify_audit_accepts(
    cast: Cast, tmp_path: Path, settings: Any
) -> None:
    import base64
    import os

    from disclosure.exports.build import open_export
    from tests.publishing import promote
    from tests.test_publication import evidence_finding, export_now

    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()
    export = export_now(cast, [promote(cast, evidence_finding(cast, tmp_path))])
    bundle = tmp_path / "bundle.tar.gz"
    bundle.write_bytes(b"".join(open_export(export)))
    with tarfile.open(bundle) as tar:
        names = [m.name.split("/", 1)[1] for m in tar.getmembers()]
        sums = tar.extractfile(next(m for m in tar.getmembers() if m.name.endswith("SHA256SUMS")))
        assert sums is not None and b"audit-checkpoint.json" in sums.read()  # signed with it
    assert "audit-checkpoint.json" in names
    shutil.rmtree(audit.checkpoint_dir())
    assert "matches 1 signed checkpoint" in verify_audit("--checkpoint", str(bundle))
    rewrite_from(2, new={"forged": 2})
    assert "history rewritten" in verify_audit_fails("--checkpoint", str(bundle))


def test_exports_sign_incrementally_from_the_last_checkpoint_and_never_bless_a_rewrite(
    log: list[AuditEntry], caplog: pytest.LogCaptureFixture
) -> None:
    first = checkpoint.Checkpoint.from_json(take_checkpoint().read_text())
    for _ in range(3):
        audit.record(None, "test.later", None)
    cp = audit.current_checkpoint()
    assert cp is not None and cp.tree_size == first.tree_size + 3
    assert "intact" in verify_audit()  # the incremental head equals the full recomputation
    # after a rewrite of covered history, an export embeds the last good checkpoint instead
    rewrite_from(2, new={"forged": 2})
    audit.record(None, "test.after_rewrite", None)
    assert audit.current_checkpoint() == cp
    assert "audit log does not verify" in caplog.text
