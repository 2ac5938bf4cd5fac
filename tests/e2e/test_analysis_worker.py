"""End to end: analyses of a trained run through a real broker and a real ``celery worker``.

One tiny source run is trained by the worker, then every kind of analysis of it is queued at
once and the same worker runs them; a second test cancels an analysis while it runs."""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import pytest

from experiments.actions.runs import check_submit_analysis, check_submit_run, do_cancel_run
from experiments.models import Artifact, Run, RunKind, RunStatus
from experiments.storage import open_artifact, run_workdir
from tests import factories
from tests.conftest import Lab
from tests.e2e.conftest import Worker, run_row, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

FINAL = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
KINDS: dict[str, dict[str, Any]] = {
    "evaluate": {},
    "probe": {"probe": "kernels"},
    "ablation": {"examples": 16, "modes": ["zero", "mean"]},
    "patching": {"examples": 16},
    "steering": {"examples": 32, "coefficients": [0, 4]},
    "mechanism": {"examples": 16},
}


def finished(pk: int) -> Run | None:
    run = run_row(pk)
    return run if run.status in FINAL else None


def trained_source(lab: Lab) -> Run:
    """A tiny 2-layer induction-head run (a copy task: interventions need one; the mechanism
    tests need two layers) trained by the worker."""
    cfg = factories.tiny_config(n_layer=2, device="cpu")
    run = check_submit_run(
        project=lab.project, config=cfg.to_dict(), experiment_name="e2e", acting_user=lab.alice
    )
    done: Run = wait_for(lambda: finished(run.pk), timeout=180, what="the source run to finish")
    assert done.status == RunStatus.SUCCEEDED, done.error
    return done


def test_every_analysis_kind_runs_on_a_real_worker(lab: Lab, start_worker: Any) -> None:
    start_worker()
    source = trained_source(lab)
    runs = {
        kind: check_submit_analysis(source=source, kind=kind, spec=spec, acting_user=lab.alice)
        for kind, spec in KINDS.items()
    }
    for kind, run in runs.items():
        done = wait_for(
            functools.partial(finished, run.pk), timeout=180, what=f"the {kind} to finish"
        )
        assert done.status == RunStatus.SUCCEEDED, f"{kind}: {done.error}\n{done.traceback}"
        assert (done.kind, done.source_id, done.step) == (kind, source.pk, 2)
        names = set(Artifact.objects.filter(run=done).values_list("name", flat=True))
        assert "analysis.json" in names and "model.safetensors" not in names
        summary = json.loads(
            b"".join(open_artifact(Artifact.objects.get(run=done, name="analysis.json")))
        )
        assert summary["analysis"]["kind"] == kind
        assert set(summary["files"]) <= names
        if kind != "evaluate":
            assert f"{kind if kind != 'probe' else 'kernels'}.png" in names
        assert not run_workdir(done.pk).exists()


def test_cancelling_a_running_analysis_stops_it_and_keeps_no_results(
    lab: Lab, start_worker: Any
) -> None:
    worker: Worker = start_worker()
    source = trained_source(lab)
    run = check_submit_analysis(
        source=source, kind=RunKind.PATCHING, spec={"examples": 16}, acting_user=lab.alice
    )
    wait_for(
        lambda: run_row(run.pk).status == RunStatus.RUNNING,
        timeout=120,
        interval=0.05,
        what="the analysis to start",
    )
    assert do_cancel_run(run_row(run.pk), acting_user=lab.alice) is True
    cancelled_at = time.monotonic()
    wait_for(lambda: worker.log().count("'stopped'") >= 1, timeout=60, what="the worker to stop it")
    assert time.monotonic() - cancelled_at < 30
    time.sleep(2)  # nothing writes to the row any more
    run = run_row(run.pk)
    assert run.status == RunStatus.CANCELLED
    assert not Artifact.objects.filter(run=run, name="analysis.json").exists()
    assert not run_workdir(run.pk).exists(), "the decrypted source checkpoint is removed"
    assert worker.alive()
    # The worker goes on with the next job.
    again = check_submit_analysis(
        source=source, kind=RunKind.EVALUATE, spec={}, acting_user=lab.alice
    )
    again = wait_for(lambda: finished(again.pk), timeout=120, what="the next analysis")
    assert again.status == RunStatus.SUCCEEDED, again.error
