"""Building a publication bundle costs the same number of queries for two findings or six:
runs, artifacts and metrics are read for all findings at once, not per finding."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from disclosure.actions.exports import check_request_export
from disclosure.exports.build import build_export
from disclosure.models import ExportKind, ReleaseDecision, ReleasePolicy
from experiments.models import Finding, FindingStatus, Tier
from experiments.storage import store_file
from tests import factories
from tests.conftest import Cast

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def master_key(settings: Any) -> None:
    settings.H3LAB_MASTER_KEYS = "mk:" + base64.b64encode(os.urandom(32)).decode()


def released_findings(cast: Cast, tmp_path: Path, n: int) -> list[Finding]:
    """``n`` public findings, each citing its own run (metrics) and a plot; released directly
    (the gates are tested elsewhere: here only the export's reads matter)."""
    lab = cast.lab
    findings = []
    for i in range(n):
        run = factories.make_run(lab.project, user=lab.alice)
        factories.add_metrics(run, "test_accuracy", [0.1, 0.5, 0.97])
        src = tmp_path / f"plot{n}-{i}.csv"
        src.write_bytes(b"layer,score\n1,0.97\n")
        artifact = store_file(run, src, f"plot{n}-{i}.csv")
        artifact.save()
        finding = factories.make_finding(
            lab.project, tier=Tier.PUBLIC, status=FindingStatus.RELEASED, title=f"F{n}-{i}"
        )
        finding.runs.add(run)
        finding.artifacts.add(artifact)
        findings.append(finding)
    policy = ReleasePolicy.objects.current()
    ReleaseDecision.objects.bulk_create(
        ReleaseDecision(
            finding=f, from_tier=t - 1, to_tier=t, policy=policy, approvals=["rita"], rationale="ok"
        )
        for f in findings
        for t in (Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC)
    )
    return findings


def build_queries(cast: Cast, findings: list[Finding]) -> list[str]:
    export = check_request_export(kind=ExportKind.PUBLIC, findings=findings, acting_user=cast.mara)
    with CaptureQueriesContext(connection) as ctx:
        assert build_export(export.pk) == "succeeded"
    # Progress is written at most twice a second: how many depends on the clock, not the data.
    return [
        q["sql"]
        for q in ctx.captured_queries
        if "SAVEPOINT" not in q["sql"]
        and not q["sql"].startswith('UPDATE "disclosure_export" SET "progress"')
    ]


def test_a_bundle_of_six_findings_reads_no_more_than_one_of_two(cast: Cast, tmp_path: Path) -> None:
    build_queries(cast, released_findings(cast, tmp_path, 1))  # creates the signing key
    two = build_queries(cast, released_findings(cast, tmp_path, 2))
    six = build_queries(cast, released_findings(cast, tmp_path, 6))
    assert len(six) == len(two), "\n".join(s[:120] for s in six)
