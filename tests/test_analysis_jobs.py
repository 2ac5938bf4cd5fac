"""Analyses of a finished run as jobs, without a broker: :func:`h3lab.jobs.execute_run` on an
analysis run of a tiny real training. ``transactional_db`` as in tests/test_jobs.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from experiments.actions.runs import (
    check_submit_analysis,
    do_cancel_run,
    do_submit_analysis,
    do_submit_run,
)
from experiments.models import Artifact, MetricPoint, Run, RunKind, RunStatus
from experiments.storage import open_artifact, run_workdir
from h3lab import jobs
from tests import factories
from tests.analyses import make_trained_run, train_checkpoint
from tests.conftest import Lab

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_checkpoint(tmp_path_factory.mktemp("source"))


@pytest.fixture
def trained(lab: Lab, checkpoint: Path) -> Run:
    """A succeeded tiny training run (induction head, a copy task) with its checkpoint."""
    return make_trained_run(lab.project, checkpoint)


def test_a_run_trained_by_a_worker_can_be_analysed(lab: Lab) -> None:
    """The whole path once: train through execute_run, then evaluate what it stored."""
    source = do_submit_run(
        project=lab.project,
        cfg=factories.tiny_config(device="cpu"),
        experiment_name="analyses",
        enqueue=False,
        acting_user=lab.alice,
    )
    assert jobs.execute_run(source.pk) == "succeeded"
    source.refresh_from_db()
    run = analyse(source, lab, "evaluate")
    assert jobs.execute_run(run.pk) == "succeeded"
    run.refresh_from_db()
    # The same weights on the same test split: what training measured at its last step.
    assert run.test_accuracy == pytest.approx(source.result["test_accuracy"])


def analyse(source: Run, lab: Lab, kind: str, **spec: Any) -> Run:
    run = check_submit_analysis(source=source, kind=kind, spec=spec, acting_user=lab.alice)
    # check_submit_analysis sent the job on commit; the test executes it itself instead.
    return run


def read_json(run: Run, name: str) -> Any:
    artifact = Artifact.objects.get(run=run, name=name)
    return json.loads(b"".join(open_artifact(artifact)))


# Every kind runs through a real worker in tests/e2e/test_analysis_worker.py; here, the two
# that write plots and the most numbers, without a broker.
@pytest.mark.parametrize(
    ("kind", "spec", "outputs"),
    [
        ("ablation", {"examples": 16, "modes": ["zero"]}, {"ablation.png", "ablation.json"}),
        ("patching", {"examples": 16}, {"patching.png", "patching.json"}),
    ],
)
def test_an_analysis_runs_on_the_source_checkpoint_and_stores_its_outputs(
    lab: Lab, trained: Run, kind: str, spec: dict[str, Any], outputs: set[str]
) -> None:
    run = analyse(trained, lab, kind, **spec)
    assert (run.kind, run.source_id, run.project_id) == (kind, trained.pk, trained.project_id)

    assert jobs.execute_run(run.pk) == "succeeded"

    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.step == run.total_steps == 2
    assert run.result["kind"] == kind
    names = set(Artifact.objects.filter(run=run).values_list("name", flat=True))
    assert outputs | {"analysis.json"} <= names
    assert "model.safetensors" not in names, "the source's weights are not stored again"
    summary = read_json(run, "analysis.json")
    assert summary["analysis"]["kind"] == kind
    assert summary == run.result["summary"]
    assert not MetricPoint.objects.filter(run=run, name="train_loss").exists()
    assert not run_workdir(run.pk).exists(), "the decrypted source checkpoint is removed"


def test_an_evaluation_reports_the_test_accuracy_of_the_source(lab: Lab, trained: Run) -> None:
    run = analyse(trained, lab, "evaluate")
    assert jobs.execute_run(run.pk) == "succeeded"
    run.refresh_from_db()
    evaluation = read_json(run, "evaluation.json")
    assert evaluation["examples"] == 16
    assert run.test_accuracy == pytest.approx(evaluation["accuracy"])
    assert run.result["summary"]["accuracy"] == pytest.approx(evaluation["accuracy"])


def test_an_analysis_cancelled_before_it_starts_is_skipped(lab: Lab, trained: Run) -> None:
    run = analyse(trained, lab, "evaluate")
    assert do_cancel_run(run, acting_user=lab.alice) is True
    assert jobs.execute_run(run.pk) == "skipped"
    assert Run.objects.get(pk=run.pk).status == RunStatus.CANCELLED


def test_an_analysis_whose_source_checkpoint_was_shredded_fails_with_a_clear_error(
    lab: Lab, trained: Run
) -> None:
    run = do_submit_analysis(
        source=trained, spec={"kind": "evaluate"}, queue="cpu", enqueue=False, acting_user=lab.alice
    )
    from experiments.storage import shred

    shred(Artifact.objects.get(run=trained, name="model.safetensors"))
    assert jobs.execute_run(run.pk) == "failed"
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "artifact" in run.error.lower() or "destroyed" in run.error.lower(), run.error


def test_only_a_succeeded_training_run_with_its_checkpoint_can_be_analysed(
    lab: Lab, trained: Run
) -> None:
    queued = factories.make_run(lab.project, status=RunStatus.QUEUED)
    with pytest.raises(ValidationError) as excinfo:
        check_submit_analysis(source=queued, kind="evaluate", spec={}, acting_user=lab.alice)
    assert "succeeded" in str(excinfo.value.message_dict["source"])

    no_files = factories.make_run(lab.project, status=RunStatus.SUCCEEDED)
    with pytest.raises(ValidationError) as excinfo:
        check_submit_analysis(source=no_files, kind="evaluate", spec={}, acting_user=lab.alice)
    assert "model.safetensors" in str(excinfo.value.message_dict["source"])

    analysis = do_submit_analysis(
        source=trained, spec={"kind": "evaluate"}, queue="cpu", enqueue=False, acting_user=lab.alice
    )
    Run.objects.filter(pk=analysis.pk).update(status=RunStatus.SUCCEEDED)
    analysis.refresh_from_db()
    with pytest.raises(ValidationError) as excinfo:
        check_submit_analysis(source=analysis, kind="evaluate", spec={}, acting_user=lab.alice)
    assert "training run" in str(excinfo.value.message_dict["source"])

    with pytest.raises(ValidationError) as excinfo:
        check_submit_analysis(
            source=trained,
            kind="dissect",
            spec={"examples": 1, "modes": ["shred"]},
            acting_user=lab.alice,
        )
    assert {"kind", "examples", "modes"} <= set(excinfo.value.message_dict)
    assert not Run.objects.filter(kind=RunKind.ABLATION).exists()
