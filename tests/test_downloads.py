"""One responder for every download (experiments.downloads.stream_file): artifacts on the page
and through the API, export bundles on the page and through the API, all answer with the same
set of headers."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

from disclosure.models import Export
from experiments.downloads import stream_file
from experiments.models import Tier
from tests import factories
from tests.conftest import Cast, login
from tests.test_api import api
from tests.test_permission_matrix import ready_export
from tests.test_views_experiments import make_artifact

pytestmark = pytest.mark.django_db

# The headers stream_file sets; the others come from the middleware (page) or DRF (API).
DOWNLOAD_HEADERS = (
    "Content-Type",
    "Content-Length",
    "Content-Disposition",
    "X-Content-Type-Options",
    "Content-Security-Policy",
    "Cache-Control",
    "Expires",
    "Digest",
    "X-Checksum-SHA256",
)
# Those whose value does not depend on the file (Expires is the time of the answer).
SAME_FOR_EVERY_FILE = ("X-Content-Type-Options", "Content-Security-Policy", "Cache-Control")


def download_headers(response: Any) -> dict[str, str]:
    assert response.status_code == 200
    b"".join(response.streaming_content)
    return {name: response[name] for name in DOWNLOAD_HEADERS if name in response}


def test_the_four_download_paths_send_the_same_headers(cast: Cast, tmp_path: Path) -> None:
    lab = cast.lab
    data = b'{"accuracy": 0.97}'
    artifact = make_artifact(factories.make_run(lab.project), tmp_path, "probe.json", data)
    export = ready_export(cast, factories.make_finding(lab.project, tier=Tier.PUBLIC))
    Export.objects.filter(pk=export.pk).update(sha256=hashlib.sha256(b"bundle").hexdigest())

    artifact_page = download_headers(
        login(lab.alice).get(reverse("artifact-download", args=[artifact.pk]))
    )
    artifact_api = download_headers(
        api(lab.alice).get(reverse("api-artifact-download", args=[artifact.pk]))
    )
    export_page = download_headers(
        login(cast.mara).get(reverse("export-download", args=[export.pk]))
    )
    export_api = download_headers(
        api(cast.mara).get(reverse("api-export-download", args=[export.pk]))
    )

    every = [artifact_page, artifact_api, export_page, export_api]
    assert all(set(headers) == set(DOWNLOAD_HEADERS) for headers in every)
    assert {k: v for k, v in artifact_page.items() if k != "Expires"} == {
        k: v for k, v in artifact_api.items() if k != "Expires"
    }
    assert {k: v for k, v in export_page.items() if k != "Expires"} == {
        k: v for k, v in export_api.items() if k != "Expires"
    }
    for name in SAME_FOR_EVERY_FILE:
        assert len({headers[name] for headers in every}) == 1, name
    digest = hashlib.sha256(data).digest()
    assert artifact_page["X-Checksum-SHA256"] == digest.hex()
    assert artifact_page["Digest"] == "sha-256=" + base64.b64encode(digest).decode()
    assert artifact_page["Content-Disposition"] == 'attachment; filename="probe.json"'
    assert export_page["Content-Disposition"].startswith("attachment; filename=")


def test_a_download_is_sandboxed_never_sniffed_and_never_cached() -> None:
    response = stream_file(
        [b"x"], filename="a.bin", content_type="application/octet-stream", size=1, sha256=""
    )
    assert response["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response["Content-Security-Policy"]
    assert "default-src 'none'" in response["Content-Security-Policy"]
    assert {"no-store", "private"} <= set(response["Cache-Control"].replace(" ", "").split(","))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", 'attachment; filename="_.._etc_passwd"'),
        ('say "hi"\r\n.txt', 'attachment; filename="say \\"hi\\"__.txt"'),
        ("", 'attachment; filename="download"'),
    ],
)
def test_the_suggested_file_name_has_no_folders_or_control_characters(
    name: str, expected: str
) -> None:
    response = stream_file([b""], filename=name, content_type="text/plain", size=0, sha256="")
    assert response["Content-Disposition"] == expected


def test_an_artifact_is_shown_in_place_only_when_it_is_a_picture(
    cast: Cast, tmp_path: Path
) -> None:
    run = factories.make_run(cast.lab.project)
    plot = make_artifact(run, tmp_path, "loss.png", b"\x89PNG")
    page = make_artifact(run, tmp_path, "notes.html", b"<script>alert(1)</script>")
    as_alice = login(cast.lab.alice)
    shown = as_alice.get(reverse("artifact-download", args=[plot.pk]), {"inline": "1"})
    saved = as_alice.get(reverse("artifact-download", args=[page.pk]), {"inline": "1"})
    assert (shown["Content-Disposition"], shown["Content-Type"]) == (
        'inline; filename="loss.png"',
        "image/png",
    )
    assert saved["Content-Disposition"].startswith("attachment")
    assert saved["Content-Type"] == "application/octet-stream"
