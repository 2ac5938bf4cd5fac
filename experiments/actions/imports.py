"""Runs imported from a demo bundle (:mod:`h3lab.demobundle`): finished training runs whose
weights were trained elsewhere and are recorded here as they are, with their provenance."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.utils import timezone

from experiments.actions.runs import create_run_row
from experiments.models import (
    Artifact,
    ArtifactKind,
    MetricPoint,
    Project,
    Run,
    RunStatus,
)
from experiments.signals import announce
from experiments.users import ActingUser
from h3lab.demobundle import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    PROVENANCE_FILE,
    BundledModel,
    BundleError,
)

log = logging.getLogger(__name__)

# The series a worker records (h3lab.jobs.ProgressRecorder), from a bundled history's rows.
SERIES: dict[str, tuple[str, ...]] = {
    "train": ("train_loss", "lr"),
    "eval": ("test_loss", "test_accuracy"),
}
ARTIFACT_KINDS: dict[str, str] = {
    MODEL_FILE: ArtifactKind.CHECKPOINT,
    CONFIG_FILE: ArtifactKind.CONFIG,
    METRICS_FILE: ArtifactKind.METRICS,
    PROVENANCE_FILE: ArtifactKind.OTHER,
}


def metric_points(history: list[dict[str, Any]]) -> list[tuple[str, int, float]]:
    """``(name, step, value)`` for each recorded series value in ``history``'s rows."""
    points: dict[tuple[str, int], float] = {}
    for row in history:
        for name in SERIES.get(str(row.get("kind")), ()):
            value = row.get(name)
            if isinstance(value, int | float):
                points.setdefault((name, int(row["step"])), float(value))
    return [(name, step, value) for (name, step), value in points.items()]


def do_import_bundled_run(
    *,
    project: Project,
    model: BundledModel,
    experiment_name: str,
    name: str,
    bundle_label: str = "demo bundle",
    acting_user: ActingUser,
) -> Run:
    """Record ``model`` (verified by :func:`h3lab.demobundle.verify_bundle`) as a succeeded
    training run of ``project``: its config, final step and measured test accuracy, its
    metrics history, and its four files as artifacts, stored (encrypted) as a trained run's
    are, so analyses read its checkpoint the same way. ``run.result["imported"]`` holds the
    provenance, which the run page shows: the run did not train here.

    Raises :class:`h3lab.demobundle.BundleError` (and records nothing) when a file's bytes
    as stored differ from the digest the bundle was verified with."""
    from experiments.storage import store_file

    cfg, prov = model.config, model.provenance
    now = timezone.now()
    history = model.history
    train_losses = [r["train_loss"] for r in history if r.get("kind") == "train"]
    result = {
        "status": prov.get("status"),
        "step": prov.get("steps"),
        "train_loss": prov.get("train_loss"),
        "test_loss": prov["evaluation"].get("loss"),
        "test_accuracy": model.test_accuracy,
        "elapsed_s": prov.get("elapsed_s"),
        "device": prov.get("device"),
        "imported": {**prov, "bundle": bundle_label, "imported_at": now.isoformat()},
    }
    with transaction.atomic():
        run = create_run_row(
            project,
            experiment_name,
            name,
            cfg,
            acting_user,
            status=RunStatus.SUCCEEDED,
            step=int(prov.get("steps") or 0),
            loss=train_losses[-1] if train_losses else None,
            test_accuracy=model.test_accuracy,
            device=str(prov.get("device") or "")[:64],
            finished_at=now,  # started_at stays empty: it did not train on this platform
            eta_s=0,
            result=result,
        )
        MetricPoint.objects.bulk_create(
            [MetricPoint(run=run, name=n, step=s, value=v) for n, s, v in metric_points(history)]
        )
        artifacts = []
        for file, kind in ARTIFACT_KINDS.items():
            artifact = store_file(run, model.folder / file, file, kind=kind)
            if artifact.sha256 != model.digests[file]:  # changed since it was verified
                raise BundleError(
                    f"{model.name}/{file} changed while it was imported (SHA-256 "
                    f"{artifact.sha256[:16]}…, verified {model.digests[file][:16]}…)"
                )
            artifacts.append(artifact)
        Artifact.objects.bulk_create(artifacts)
        announce(
            acting_user,
            "run.import",
            run,
            new={
                "bundle": bundle_label,
                "model": model.name,
                "weights_sha256": model.digests[MODEL_FILE],
                "command": prov.get("command"),
                "h3lab_commit": prov.get("h3lab_commit"),
            },
        )
    log.info("imported %s from the %s as run %s", model.name, bundle_label, run.pk)
    return run
