"""Partner copies: exactly what the recipient's grant covers, only after their agreement is
accepted, marked per recipient (wording and file metadata), encrypted at rest, downloadable by
the recipient while the grant holds; ``trace_leak`` names the recipient of a leaked excerpt."""

from __future__ import annotations

import base64
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from disclosure import leaks, marks, policy
from disclosure.actions.exports import check_request_export
from disclosure.actions.grants import do_revoke_grant
from disclosure.exports.build import build_export, exports_root, open_export
from disclosure.exports.formats import finding_slug
from disclosure.exports.rules import ExportRefused
from disclosure.models import AuditEntry, Export, ExportKind, Grant, RecipientMark
from experiments.models import Finding, Tier
from tests import factories
from tests.conftest import Cast, login
from tests.publishing import promote
from tests.tarballs import members
from tests.test_publication import BODY, PNG, evidence_finding
from vault import crypto

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def master_key(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()


def retype(text: str) -> str:
    """What someone retyping or pasting into a plain-text field produces."""
    return re.sub(r"\s+", " ", re.sub(f"[{marks.ZW0}{marks.ZW1}{marks.ZW_END}]", "", text))


class World:
    def __init__(self, cast: Cast, tmp_path: Path) -> None:
        lab = cast.lab
        self.cast = cast
        self.granted = promote(cast, evidence_finding(cast, tmp_path), to=Tier.PARTNERS)
        self.second = promote(
            cast, factories.make_finding(lab.project, title="Second", body=BODY), to=Tier.PARTNERS
        )
        self.elsewhere = promote(
            cast,
            factories.make_finding(lab.other_project, title="Recall secret", body=BODY),
            to=Tier.PARTNERS,
        )
        self.review = promote(
            cast, factories.make_finding(lab.project, title="Review only"), to=Tier.REVIEW
        )
        self.public = promote(cast, factories.make_finding(lab.project, title="Public one"))
        self.dora = factories.make_user("dora")
        factories.make_grant(self.dora, project=lab.project)
        factories.accept(self.dora, cast.agreement)


@pytest.fixture
def world(cast: Cast, tmp_path: Path) -> World:
    return World(cast, tmp_path)


def partner_copy(cast: Cast, recipient: Any, findings: list[Finding] | None = None) -> Export:
    export = check_request_export(
        kind=ExportKind.PARTNER, findings=findings or [], recipient=recipient, acting_user=cast.mara
    )
    assert build_export(export.pk) == "succeeded", Export.objects.get(pk=export.pk).message
    export.refresh_from_db()
    return export


def files_of(export: Export) -> dict[str, bytes]:
    blob = b"".join(open_export(export))
    return {m.name.split("/", 1)[1]: data for m, data in members(blob)}


def test_a_partner_copy_holds_exactly_what_the_grant_covers(world: World) -> None:
    carol = world.cast.carol
    export = partner_copy(world.cast, carol)
    expected = set(policy.partner_copy_findings(carol))
    assert expected == {world.granted, world.second}
    assert set(export.findings.all()) == expected
    files = files_of(export)
    manifest = json.loads(files["manifest.json"])
    assert set(manifest["findings"]) == {str(f.public_id) for f in expected}
    assert manifest["recipient"] == "carol"
    blob = b"".join(files.values())
    for outside in (world.elsewhere, world.review, world.public):
        assert outside.title.encode() not in blob
        assert str(outside.public_id).encode() not in blob
    assert {p.split("/")[1] for p in files if p.startswith("findings/")} == {
        f"{finding_slug(f)}.{ext}" for f in expected for ext in ("md", "json")
    }


def test_findings_outside_the_grant_are_refused_by_name(world: World) -> None:
    with pytest.raises(ExportRefused) as refused:
        check_request_export(
            kind=ExportKind.PARTNER,
            findings=[world.granted, world.elsewhere, world.review],
            recipient=world.cast.carol,
            acting_user=world.cast.mara,
        )
    assert refused.value.blockers == {
        f"finding #{world.elsewhere.pk} “Recall secret”": [
            "not covered by an active grant of carol"
        ],
        f"finding #{world.review.pk} “Review only”": [
            "at the review tier (a partner copy carries partner-tier findings)",
            "no recorded release decision to the partners tier",
        ],
    }


def test_no_copy_before_the_agreement_is_accepted_or_after_the_grant_lapsed(world: World) -> None:
    cast = world.cast
    with pytest.raises(ExportRefused) as nick:
        check_request_export(
            kind=ExportKind.PARTNER,
            findings=[world.granted],
            recipient=cast.nick,
            acting_user=cast.mara,
        )
    assert nick.value.blockers["recipient"] == ["nick has not accepted the current agreement v2"]
    with pytest.raises(ExportRefused) as erin:
        check_request_export(kind=ExportKind.PARTNER, recipient=cast.erin, acting_user=cast.mara)
    assert erin.value.blockers == {"recipient": ["no partner-tier finding is granted to erin"]}
    # A grant revoked between the request and the job: the job refuses too.
    export = check_request_export(
        kind=ExportKind.PARTNER, recipient=cast.carol, acting_user=cast.mara
    )
    do_revoke_grant(Grant.objects.get(user=cast.carol), acting_user=cast.mara)
    assert build_export(export.pk) == "refused"
    export.refresh_from_db()
    assert "not covered by an active grant of carol" in export.message


def test_copies_are_marked_per_recipient_in_text_and_file_metadata(world: World) -> None:
    carol = partner_copy(world.cast, world.cast.carol)
    dora = partner_copy(world.cast, world.dora)
    slug = finding_slug(world.granted)
    run = world.granted.runs.get()
    c, d = files_of(carol), files_of(dora)
    assert retype(c[f"findings/{slug}.md"].decode()) != retype(d[f"findings/{slug}.md"].decode())
    token = RecipientMark.objects.get(export=carol).token
    png = c[f"evidence/{slug}/artifacts/{run.pk}-attention.png"]
    assert marks.png_marks(png) == [token] and png.replace(b"h3lab-mark", b"") != PNG
    csv_text = c[f"evidence/{slug}/artifacts/{run.pk}-probe.csv"].decode()
    assert csv_text.startswith(f"# h3lab-mark: {token}\n")
    assert json.loads(c[f"findings/{slug}.json"])["h3lab-mark"] == token
    entry = AuditEntry.objects.get(action="export.build", object_id=str(carol.pk))
    assert entry.new is not None
    assert (entry.new["recipient"], entry.new["mark"]) == ("carol", token)


def test_a_partner_copy_is_ciphertext_at_rest(world: World) -> None:
    export = partner_copy(world.cast, world.cast.carol)
    stored = (exports_root() / export.path).read_bytes()
    assert export.encrypted is True and stored.startswith(crypto.MAGIC)
    assert b"induction" not in stored and b"Second" not in stored


def test_a_retyped_excerpt_of_a_few_sentences_names_the_recipient(world: World) -> None:
    copies = {
        "carol": partner_copy(world.cast, world.cast.carol),
        "dora": partner_copy(world.cast, world.dora),
    }
    slug = finding_slug(world.second)
    for name, export in copies.items():
        text = retype(files_of(export)[f"findings/{slug}.md"].decode())
        start = text.index("We ")
        sentences = re.split(r"(?<=[.!?])\s+", text[start:])
        excerpt = " ".join(sentences[:3])
        result = leaks.trace_leak(excerpt)
        assert result.mark is not None, result.detail
        assert (result.mark.recipient.username, result.mark.export_id) == (name, export.pk)
        out = io.StringIO()
        call_command("trace_leak", excerpt, stdout=out)
        assert f"traced to {name}: partner copy export #{export.pk}" in out.getvalue()


def test_a_leaked_file_is_traced_by_its_metadata_mark(world: World, tmp_path: Path) -> None:
    export = partner_copy(world.cast, world.cast.carol)
    slug = finding_slug(world.granted)
    run = world.granted.runs.get()
    png = tmp_path / "leaked.png"
    png.write_bytes(files_of(export)[f"evidence/{slug}/artifacts/{run.pk}-attention.png"])
    out = io.StringIO()
    call_command("trace_leak", str(png), stdout=out)
    assert f"traced to carol: partner copy export #{export.pk}" in out.getvalue()
    assert "metadata" in out.getvalue()
    bundle = tmp_path / "leaked.tar.gz"
    bundle.write_bytes(b"".join(open_export(export)))
    assert leaks.trace_leak(str(bundle)).mark.export_id == export.pk  # type: ignore[union-attr]


def test_the_lab_s_own_wording_or_unrelated_text_is_not_attributed(world: World) -> None:
    partner_copy(world.cast, world.cast.carol)
    for text in (retype(BODY), "The weather was nice. We went for a walk by the river."):
        with pytest.raises(CommandError, match="cannot attribute"):
            call_command("trace_leak", text, stdout=io.StringIO())


def test_the_recipient_downloads_their_copy_only_while_the_grant_holds(world: World) -> None:
    cast = world.cast
    export = partner_copy(cast, cast.carol)
    url = reverse("export-download", args=[export.pk])
    response = login(cast.carol).get(url)
    assert response.status_code == 200
    blob = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert blob.startswith(b"\x1f\x8b")  # decrypted for the download: a gzip archive
    assert login(world.dora).get(url).status_code == 404
    assert login(cast.erin).get(url).status_code == 404
    do_revoke_grant(Grant.objects.get(user=cast.carol), acting_user=cast.mara)
    assert login(cast.carol).get(url).status_code == 404
    assert login(cast.mara).get(url).status_code == 200
