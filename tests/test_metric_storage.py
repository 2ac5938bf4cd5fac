"""Long runs keep a bounded number of metric rows: training series are downsampled on write
(evaluations and the last step kept), every raw point goes to the run's raw series file, and
the run page's chart reads the bounded rows."""

from __future__ import annotations

import csv

import pytest
from django.urls import reverse

from experiments import metrics
from experiments.actions.worker import do_claim_run, do_record_progress
from experiments.models import MetricPoint, RunStatus
from experiments.storage import run_workdir
from tests import factories
from tests.conftest import Lab

TRAIN = ("train_loss", "train_accuracy", "tokens_per_s", "lr")


def test_a_million_raw_points_keep_about_a_thousand_per_series() -> None:
    total = 250_000  # four training series: one million raw points
    raw = [(name, step, 1.0) for step in range(1, total + 1) for name in TRAIN]
    raw += [("test_accuracy", step, 0.5) for step in range(1, total + 1, 7)]
    kept = metrics.downsample(raw, total)
    per_series = {name: sum(1 for n, _, _ in kept if n == name) for name in TRAIN}
    assert set(per_series.values()) == {metrics.MAX_POINTS_PER_SERIES}
    assert ("train_loss", total, 1.0) in kept  # the last step, whatever the stride
    evaluations = [p for p in kept if p[0] == "test_accuracy"]
    assert len(evaluations) == len(range(1, total + 1, 7))  # evaluations are kept whole


def test_short_runs_keep_every_point() -> None:
    raw = [("train_loss", s, 1.0 / (s + 1)) for s in range(0, 500)]
    assert metrics.downsample(raw, 500) == raw


@pytest.mark.django_db
def test_the_worker_stores_bounded_rows_and_the_raw_series_as_a_file(lab: Lab) -> None:
    run = factories.make_run(
        lab.project, status=RunStatus.QUEUED, config=factories.tiny_config(steps=100_000)
    )
    claim = do_claim_run(run.pk, host="w")
    assert claim is not None
    for start in range(0, 100_000, 5_000):  # twenty progress writes
        points = [("train_loss", s, 1.0) for s in range(start + 1, start + 5_001)]
        fields = {"step": start + 5_000, "total_steps": 100_000}
        assert do_record_progress(run.pk, claim.token, fields=fields, points=points) is True
    do_record_progress(run.pk, claim.token, fields={}, points=[("test_loss", 100_000, 0.1)])
    stored = MetricPoint.objects.filter(run=run, name="train_loss")
    assert stored.count() == metrics.MAX_POINTS_PER_SERIES
    assert MetricPoint.objects.filter(run=run, name="test_loss").count() == 1
    with (run_workdir(run.pk) / metrics.RAW_FILE).open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["name", "step", "value"]
    assert len(rows) == 1 + 100_000 + 1


@pytest.mark.django_db
def test_the_chart_reads_the_bounded_rows(lab: Lab) -> None:
    from tests.conftest import login

    run = factories.make_run(
        lab.project, status=RunStatus.QUEUED, config=factories.tiny_config(steps=200_000)
    )
    claim = do_claim_run(run.pk, host="w")
    assert claim is not None
    points = [("train_loss", s, 1.0) for s in range(1, 200_001)]
    do_record_progress(run.pk, claim.token, fields={"total_steps": 200_000}, points=points)
    payload = login(lab.alice).get(reverse("run-progress", args=[run.pk])).json()
    assert len(payload["series"]["train_loss"]) == metrics.MAX_POINTS_PER_SERIES
