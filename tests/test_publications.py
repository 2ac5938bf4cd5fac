"""Delivery: the public Publications page lists released bundles for anyone to download with the
verification recipe (the same steps as docs/verify.md); a retraction takes a bundle down; a
partner is notified of, and linked to, the copy made for them."""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from disclosure.actions.retraction import do_retract_finding
from disclosure.models import Notification, NotificationKind
from experiments.models import Tier
from tests.conftest import Cast, login
from tests.publishing import promote
from tests.test_publication import bundle_bytes, evidence_finding, export_now
from tests.test_publication_partner import partner_copy

pytestmark = pytest.mark.django_db

DOC = Path(__file__).resolve().parents[1] / "docs" / "verify.md"


@pytest.fixture(autouse=True)
def master_key(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()


def test_anyone_lists_and_downloads_a_released_bundle(cast: Cast, tmp_path: Path) -> None:
    finding = promote(cast, evidence_finding(cast, tmp_path, title="Induction heads in H3"))
    export = export_now(cast, [finding])
    page = Client().get(reverse("publications"))
    text = page.content.decode()
    url = reverse("publication-download", args=[export.pk, export.name])
    assert page.status_code == 200 and url in text and "Induction heads in H3" in text
    assert export.sha256 in text and export.signing_key_id in text
    r = Client().get(url)
    assert r.status_code == 200 and r["Content-Type"] == "application/gzip"
    assert b"".join(r.streaming_content) == bundle_bytes(export)  # type: ignore[attr-defined]
    assert (
        Client().get(reverse("publication-download", args=[export.pk, "other"])).status_code == 404
    )


def test_a_retraction_takes_its_bundles_down(cast: Cast, tmp_path: Path) -> None:
    finding = promote(cast, evidence_finding(cast, tmp_path, title="Soon retracted"))
    export = export_now(cast, [finding])
    do_retract_finding(finding, reason="flawed analysis", acting_user=cast.lab.alice)
    page = Client().get(reverse("publications")).content.decode()
    assert "Soon retracted" not in page and export.name not in page
    url = reverse("publication-download", args=[export.pk, export.name])
    assert Client().get(url).status_code == 404


def test_partner_copies_are_never_listed(cast: Cast, tmp_path: Path) -> None:
    promote(cast, evidence_finding(cast, tmp_path, title="Partners only"), to=Tier.PARTNERS)
    export = partner_copy(cast, cast.carol)
    page = Client().get(reverse("publications")).content.decode()
    assert "Partners only" not in page and export.name not in page
    assert "Nothing published yet" in page
    url = reverse("publication-download", args=[export.pk, export.name])
    assert Client().get(url).status_code == 404


def test_the_page_shows_the_documented_verification_steps(cast: Cast) -> None:
    text = Client().get(reverse("publications")).content.decode()
    shown = [html.unescape(b) for b in re.findall(r"<pre><code>(.*?)</code></pre>", text, re.S)]
    doc = DOC.read_text()
    steps = doc[doc.index("## 1.") : doc.index("## With h3lab installed")]
    documented = re.findall(r"```sh\n(.*?)```", steps, flags=re.S)
    site = "http://testserver"
    expected = [b.replace("https://lab.example.org", site) for b in documented]
    assert shown == expected


def test_a_partner_is_told_of_and_linked_to_their_copy(cast: Cast, tmp_path: Path) -> None:
    promote(cast, evidence_finding(cast, tmp_path, title="Shared circuit"), to=Tier.PARTNERS)
    export = partner_copy(cast, cast.carol)
    notice = Notification.objects.get(user=cast.carol, kind=NotificationKind.PARTNER_COPY)
    assert notice.url == reverse("export", args=[export.pk])
    assert "Shared circuit" not in notice.subject + notice.body
    c = login(cast.carol)
    access = c.get(reverse("my-access")).content.decode()
    assert reverse("export", args=[export.pk]) in access
    assert c.get(notice.url).status_code == 200
    assert c.get(reverse("export-download", args=[export.pk])).status_code == 200
