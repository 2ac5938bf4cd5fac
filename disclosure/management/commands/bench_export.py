"""``manage.py bench_export``: time a publication-bundle export of N public findings.

Runs in a child process against a scratch SQLite database only (created and thrown away): N
public findings with their recorded release decisions, each citing a run (one run per ten
findings, 3 metric series × 50 points) and a released plot; then the export request (every
blocker checked), the bundle build (Markdown + JSON per finding, evidence, RO-Crate,
CITATION.cff, SHA-256 of every file, signatures) and a full verification.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

BODY = (
    "We observe that an induction head forms in the second layer at approximately step {i}. "
    "In particular, the prefix-matching score rises quickly, however the copying score does "
    "not move until several hundred steps later. This suggests that the two circuits are "
    "learned in sequence rather than together.\n\n"
    "For example, the H3 model shows the same ordering: its shift SSM typically learns a "
    "previous-token filter first. We therefore think the method is not specific to attention."
)


class Command(BaseCommand):
    help = "Time a signed publication-bundle export of N public findings (scratch database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--findings", type=int, default=1000)
        parser.add_argument("--out", default="out/bench_export.json")
        parser.add_argument("--worker", nargs=2, metavar=("N", "JSON"), help=_hidden())

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["worker"]:
            n, out = opts["worker"]
            Path(out).write_text(json.dumps(_work(int(n))))
            return
        with tempfile.TemporaryDirectory(prefix="h3lab-bench-") as tmp:
            env = dict(os.environ)
            env.update(
                DATABASE_URL=f"sqlite:///{tmp}/bench.sqlite3",
                H3LAB_VAR_DIR=tmp,
                H3LAB_DATA_DIR=f"{tmp}/data",
                H3LAB_MASTER_KEYS="bench:" + base64.b64encode(os.urandom(32)).decode(),
            )
            out = Path(tmp) / "result.json"
            cmd = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), "bench_export"]
            subprocess.run([*cmd, "--worker", str(opts["findings"]), str(out)], env=env, check=True)
            result = json.loads(out.read_text())
        result["machine"] = (
            f"{os.cpu_count()}-core {platform.machine()}, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}"
        )
        path = Path(opts["out"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
        w = self.stdout.write
        w(f"publication export, {result['findings']:,} public findings ({result['machine']})")
        w(f"{'phase':<34}{'seconds':>10}")
        for phase in ("populate", "request", "build", "verify"):
            w(f"{phase:<34}{result[phase + '_s']:>10.2f}")
        w(f"{'bundle':<34}{result['bundle_mib']:>9.1f} MiB, {result['files']:,} files")
        w(f"wrote {path}")


def _hidden() -> str:
    import argparse

    return argparse.SUPPRESS


def _work(n: int) -> dict[str, Any]:
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection, transaction

    from disclosure import bundles, signing
    from disclosure.actions.exports import check_request_export
    from disclosure.exports.build import build_export, exports_root
    from disclosure.models import ExportKind, ReleaseDecision, ReleasePolicy
    from experiments import storage
    from experiments.actions.projects import do_create_project
    from experiments.models import Experiment, Finding, FindingStatus, MetricPoint, Run, Tier

    name = str(connection.settings_dict["NAME"])
    if "h3lab-bench-" not in name:  # SECURITY: never populate a real database
        raise CommandError(f"refusing to benchmark against non-scratch database {name!r}")
    call_command("migrate", verbosity=0)
    t0 = time.perf_counter()
    mara = User.objects.create_user("mara", password="x")  # noqa: S106 -- scratch bench database
    from django.contrib.auth.models import Group

    Group.objects.get(name=settings.H3LAB_RELEASE_MANAGERS_GROUP).user_set.add(mara)
    alice = User.objects.create_user(
        "alice",
        password="x",  # noqa: S106 -- scratch bench database
        first_name="Alice",
        last_name="Lab",
    )
    project = do_create_project(
        slug="induction", name="Induction", members=[alice], acting_user=None
    )
    policy = ReleasePolicy.objects.current()
    png = Path(settings.MEDIA_ROOT) / "plot.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    png.write_bytes(_png())
    experiment = Experiment.objects.create(project=project, name="bench")
    with transaction.atomic():
        runs, artifacts = [], []
        for r in range(max(1, n // 10)):
            run = Run.objects.create(
                experiment=experiment, project=project, created_by=alice, status="succeeded",
                config={"preset": "h3", "task": {"name": "induction_head"}, "seed": r},
                preset="h3", task="induction_head", total_steps=500, step=500,
            )  # fmt: skip
            MetricPoint.objects.bulk_create(
                MetricPoint(run=run, name=m, step=s * 10, value=1.0 / (s + 1))
                for m in ("train_loss", "test_loss", "test_accuracy")
                for s in range(50)
            )
            artifact = storage.store_file(run, png, f"attention-{r}.png")
            artifact.save()
            storage.declassify(artifact)  # released evidence is stored in the clear
            runs.append(run)
            artifacts.append(artifact)
        findings = Finding.objects.bulk_create(
            Finding(
                project=project,
                title=f"Induction head finding {i}",
                body=BODY.format(i=i),
                tier=Tier.PUBLIC,
                status=FindingStatus.RELEASED,
                created_by=alice,
            )
            for i in range(n)
        )
        Finding.runs.through.objects.bulk_create(
            Finding.runs.through(finding_id=f.pk, run_id=runs[i // 10].pk)
            for i, f in enumerate(findings)
        )
        Finding.artifacts.through.objects.bulk_create(
            Finding.artifacts.through(finding_id=f.pk, artifact_id=artifacts[i // 10].pk)
            for i, f in enumerate(findings)
        )
        ReleaseDecision.objects.bulk_create(
            ReleaseDecision(
                finding=f, from_tier=t - 1, to_tier=t, policy=policy, approvals=["rita"],
                rationale="bench",
            )
            for f in findings
            for t in (Tier.REVIEW, Tier.PARTNERS, Tier.PUBLIC)
        )  # fmt: skip
    signing.current_key()
    populate = time.perf_counter() - t0
    t = time.perf_counter()
    export = check_request_export(kind=ExportKind.PUBLIC, project=project, acting_user=mara)
    request = time.perf_counter() - t
    t = time.perf_counter()
    outcome = build_export(export.pk)
    build = time.perf_counter() - t
    export.refresh_from_db()
    if outcome != "succeeded":
        raise CommandError(f"export {outcome}: {export.message}")
    t = time.perf_counter()
    with (exports_root() / export.path).open("rb") as f:
        report = bundles.verify_bundle(f, signing.trusted_public_keys())
    verify = time.perf_counter() - t
    if not report.ok:
        raise CommandError(report.summary())
    return {
        "findings": n,
        "runs": len(runs),
        "files": report.files_checked,
        "bundle_mib": export.size / (1 << 20),
        "populate_s": populate,
        "request_s": request,
        "build_s": build,
        "verify_s": verify,
        "database": "SQLite (scratch)",
    }


def _png() -> bytes:
    """A small real plot (matplotlib, Agg), like a run's attention plot."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(range(50), [1.0 / (s + 1) for s in range(50)])
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=60)
    plt.close(fig)
    return buf.getvalue()
