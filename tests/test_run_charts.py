"""The run page's charts and live log: min/max downsampling, series.json (any metric, capped
points), log.json (the worker's live train.log while the run is active, the stored encrypted
log after), the compare page's metrics table, and a cancelled run keeping its log."""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.actions.runs import do_cancel_run
from experiments.actions.worker import do_archive_workdir
from experiments.models import Artifact, MetricPoint, Run, RunStatus
from experiments.presenters import downsample_minmax, file_tail
from experiments.storage import run_workdir
from tests import factories
from tests.conftest import Lab
from tests.test_views_experiments import NAV_QUERIES, SECOND_FACTOR_QUERIES, make_artifact

# --- downsampling (pure) ------------------------------------------------------------------------


def series_of(values: list[float]) -> list[list[float]]:
    return [[float(i), v] for i, v in enumerate(values)]


def test_a_series_under_the_cap_is_returned_unchanged() -> None:
    points = series_of([3.0, 1.0, 2.0, 5.0])
    assert downsample_minmax(points, 4) == points
    assert downsample_minmax(points, 1000) == points
    assert downsample_minmax([], 10) == []


@pytest.mark.parametrize("seed", range(20))
def test_downsampling_keeps_first_last_and_extremes_within_the_cap(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - test data, not secrets
    n = rng.randint(50, 5000)
    max_points = rng.randint(2, 400)
    points = series_of([rng.gauss(0, 1) for _ in range(n)])

    kept = downsample_minmax(points, max_points)

    assert len(kept) <= max_points
    assert kept[0] == points[0] and kept[-1] == points[-1]
    assert [p[0] for p in kept] == sorted({p[0] for p in kept}), "in step order, no repeats"
    assert all(p in points for p in kept)
    if max_points >= 4:
        values = [p[1] for p in kept]
        assert min(values) == min(p[1] for p in points)
        assert max(values) == max(p[1] for p in points)


def test_a_single_spike_survives_where_a_stride_would_drop_it() -> None:
    values = [1.0] * 10_000
    values[4_321] = 50.0  # one diverging step
    kept = downsample_minmax(series_of(values), 100)
    assert [4321.0, 50.0] in kept
    assert len(kept) <= 100


def test_fewer_than_two_points_cannot_be_asked_for() -> None:
    with pytest.raises(ValueError):
        downsample_minmax(series_of([1.0, 2.0, 3.0]), 1)


# --- series.json ----------------------------------------------------------------------------------


@pytest.fixture
def done(lab: Lab) -> Run:
    run = factories.make_run(lab.project, name="long", user=lab.alice)
    factories.add_metrics(run, "train_loss", [1.0 / (i + 1) for i in range(3000)])
    factories.add_metrics(run, "grad_norm", [float(i % 7) for i in range(30)])
    return run


def test_series_json_serves_any_recorded_metric_and_lists_them_all(
    as_alice: Client, done: Run
) -> None:
    data = as_alice.get(reverse("run-series", args=[done.pk]), {"name": "grad_norm"}).json()
    assert data["names"] == ["grad_norm", "train_loss"]
    assert list(data["series"]) == ["grad_norm"]
    assert data["series"]["grad_norm"][:3] == [[0, 0.0], [10, 1.0], [20, 2.0]]
    assert data["cursor"] == MetricPoint.objects.filter(run=done, name="grad_norm").latest("pk").pk


def test_series_json_caps_points_per_series(as_alice: Client, done: Run) -> None:
    url = reverse("run-series", args=[done.pk])
    default = as_alice.get(url).json()
    assert len(default["series"]["train_loss"]) <= 1000
    capped = as_alice.get(url, {"name": "train_loss", "max_points": "50"}).json()
    loss = capped["series"]["train_loss"]
    assert capped["max_points"] == 50 and len(loss) <= 50
    assert loss[0] == [0, 1.0] and loss[-1] == [29990, 1.0 / 3000]
    too_many = as_alice.get(url, {"name": "train_loss", "max_points": "10000000"}).json()
    assert too_many["max_points"] == 5000 and len(too_many["series"]["train_loss"]) == 3000
    nonsense = as_alice.get(url, {"name": "train_loss", "max_points": "lots"}).json()
    assert nonsense["max_points"] == 1000


def test_series_and_log_json_are_404_for_non_members(
    as_bob: Client, client: Client, done: Run
) -> None:
    for name in ("run-series", "run-log"):
        assert as_bob.get(reverse(name, args=[done.pk])).status_code == 404
        anonymous = client.get(reverse(name, args=[done.pk]))
        assert anonymous.status_code == 302 and reverse("login") in anonymous["Location"]


@pytest.mark.parametrize("n_names", [1, 8])
def test_series_json_uses_a_constant_number_of_queries(
    as_alice: Client, lab: Lab, n_names: int, django_assert_num_queries: Any
) -> None:
    run = factories.make_run(lab.project)
    names = [f"metric_{i}" for i in range(n_names)]
    for name in names:
        factories.add_metrics(run, name, [1.0, 2.0, 3.0])
    # 1 session, 2 user, 3 the run (policy), 4 the points of the asked series, 5 the metric
    # names for the picker; plus the second-factor gate's roles. No nav: JSON.
    with django_assert_num_queries(5 + SECOND_FACTOR_QUERIES):
        data = as_alice.get(reverse("run-series", args=[run.pk]), {"name": names}).json()
    assert sorted(data["series"]) == names


# --- the live log ---------------------------------------------------------------------------------


def write_live_log(run: Run, n: int) -> Path:
    workdir = run_workdir(run.pk)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "train.log"
    path.write_text("".join(f"step {i} loss {1 / (i + 1):.3f}\n" for i in range(n)))
    return path


def test_an_active_runs_log_is_served_live_from_its_folder(as_alice: Client, lab: Lab) -> None:
    run = factories.make_run(lab.project, status=RunStatus.RUNNING, step=5)
    url = reverse("run-log", args=[run.pk])
    assert as_alice.get(url).json() == {"active": True, "source": "", "lines": []}

    path = write_live_log(run, 300)
    data = as_alice.get(url, {"lines": "20"}).json()
    assert (data["active"], data["source"]) == (True, "live")
    assert data["lines"][0] == "step 280 loss 0.004" and data["lines"][-1] == "step 299 loss 0.003"

    with path.open("a") as f:
        f.write("step 300 loss 0.002\n")
    assert as_alice.get(url, {"lines": "1"}).json()["lines"] == ["step 300 loss 0.002"]

    page = as_alice.get(reverse("run", args=[run.pk]))
    assert page.context["log_source"] == "live"
    assert "step 299 loss 0.003" in page.content.decode()
    assert 'aria-live="polite"' in page.content.decode()


def test_the_log_is_served_from_the_stored_artifact_once_the_run_is_final(
    as_alice: Client, lab: Lab, tmp_path: Path
) -> None:
    run = factories.make_run(lab.project, status=RunStatus.SUCCEEDED)
    make_artifact(run, tmp_path, "train.log", b"step 1 loss 2.0\nstep 2 loss 1.0\n")
    data = as_alice.get(reverse("run-log", args=[run.pk])).json()
    assert data == {
        "active": False,
        "source": "artifact",
        "lines": ["step 1 loss 2.0", "step 2 loss 1.0"],
    }


def test_a_cancelled_run_keeps_its_log_on_the_page_and_in_log_json(
    as_alice: Client, lab: Lab
) -> None:
    run = factories.make_run(lab.project, status=RunStatus.RUNNING, step=5, user=lab.alice)
    write_live_log(run, 10)
    assert as_alice.get(reverse("run-log", args=[run.pk])).json()["source"] == "live"

    assert do_cancel_run(run, reason="wrong lr", acting_user=lab.alice) is True
    # What the worker does when it notices the cancellation (h3lab/jobs.py), or the reaper's
    # sweep: the folder goes, the log is kept encrypted.
    assert do_archive_workdir(run.pk, run_workdir(run.pk)) is True
    assert not run_workdir(run.pk).exists()
    assert Artifact.objects.get(run=run, name="train.log").encrypted is True

    data = as_alice.get(reverse("run-log", args=[run.pk])).json()
    assert (data["active"], data["source"]) == (False, "artifact")
    assert data["lines"][-1] == "step 9 loss 0.100"
    page = as_alice.get(reverse("run", args=[run.pk])).content.decode()
    assert "step 9 loss 0.100" in page and "kept no train.log" not in page


@pytest.mark.django_db(transaction=True)
def test_a_run_cancelled_while_training_keeps_its_log_for_the_run_page(
    lab: Lab, as_alice: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    from h3lab import jobs
    from tests.test_faults import submit

    run = submit(lab, steps=1000, checkpoint_every=5, eval_every=1000)
    real_progress = jobs.ProgressRecorder.progress

    cancelled: list[int] = []

    def progress(self: jobs.ProgressRecorder, p: Any) -> None:
        if p.step >= 10 and not cancelled:  # "Cancel run" pressed while it trains
            do_cancel_run(Run.objects.get(pk=run.pk), reason="enough", acting_user=lab.alice)
            cancelled.append(p.step)
        elif cancelled:
            time.sleep(0.02)  # a tiny run would finish before the worker's next write notices
        real_progress(self, p)

    monkeypatch.setattr(jobs.ProgressRecorder, "progress", progress)
    assert jobs.execute_run(run.pk) == "stopped", f"cancelled at step {cancelled}"

    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED
    assert not run_workdir(run.pk).exists(), "the worker removed the plaintext folder"
    assert Artifact.objects.get(run=run, name="train.log").encrypted is True
    data = as_alice.get(reverse("run-log", args=[run.pk])).json()
    assert (data["active"], data["source"]) == (False, "artifact")
    assert any("step" in line for line in data["lines"])
    page = as_alice.get(reverse("run", args=[run.pk]))
    assert page.context["log_lines"] == data["lines"][-50:]


def test_file_tail_reads_only_the_end_of_a_long_log(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i} " + "x" * 90 + "\n" for i in range(5000)))  # ~500 KB
    tail = file_tail(path, 3)
    assert tail is not None and [t.split()[1] for t in tail] == ["4997", "4998", "4999"]
    assert file_tail(tmp_path / "missing.log", 3) is None
    everything = file_tail(path, 10_000)
    assert everything is not None and 0 < len(everything) < 5000
    assert all(line.startswith("line ") for line in everything), "no cut first line"


@pytest.mark.parametrize("n_lines", [5, 500])
def test_log_json_and_the_active_run_page_use_constant_queries(
    as_alice: Client, lab: Lab, n_lines: int, django_assert_num_queries: Any
) -> None:
    run = factories.make_run(lab.project, status=RunStatus.RUNNING, step=5, user=lab.alice)
    write_live_log(run, n_lines)
    # 1 session, 2 user, 3 the run (policy); plus the second-factor gate's. The live file is
    # read from disk; artifacts are not queried while the run is active.
    with django_assert_num_queries(3 + SECOND_FACTOR_QUERIES):
        as_alice.get(reverse("run-log", args=[run.pk]))
    # The run page as before (run, artifacts, creator) with the live tail: no more queries.
    with django_assert_num_queries(5 + NAV_QUERIES + SECOND_FACTOR_QUERIES):
        as_alice.get(reverse("run", args=[run.pk]))


# --- compare --------------------------------------------------------------------------------------


def test_compare_shows_best_and_final_metrics_and_embeds_every_series(
    as_alice: Client, lab: Lab
) -> None:
    a = factories.make_run(lab.project, name="a", test_accuracy=0.5, loss=0.7, step=100)
    b = factories.make_run(lab.project, name="b", test_accuracy=0.9, loss=0.2, step=200)
    factories.add_metrics(a, "test_accuracy", [0.3, 0.8, 0.5])
    factories.add_metrics(a, "test_loss", [2.0, 0.4, 0.9])
    factories.add_metrics(b, "train_loss", [1.0, 0.5])
    factories.add_metrics(b, "grad_norm", [3.0])
    response = as_alice.get(reverse("runs-compare"), {"ids": [a.pk, b.pk]})
    summary = {row["run"].pk: row for row in response.context["summary"]}
    assert summary[a.pk]["best_test_accuracy"] == 0.8 and summary[a.pk]["best_test_loss"] == 0.4
    assert summary[a.pk]["final_test_accuracy"] == 0.5 and summary[b.pk]["steps"] == 200
    assert summary[b.pk]["best_test_accuracy"] is None
    chart = response.context["chart_data"]
    assert chart["names"] == ["grad_norm", "test_accuracy", "test_loss", "train_loss"]
    assert "grad_norm" not in chart["series"][b.pk], "fetched when picked, not embedded"
    assert chart["series"][a.pk]["test_loss"] == [[0, 2.0], [10, 0.4], [20, 0.9]]
    picked = as_alice.get(chart["series_url"], {"ids": [str(a.pk), str(b.pk)], "name": "grad_norm"})
    assert picked.json() == {"series": {str(b.pk): {"grad_norm": [[0, 3.0]]}}}
    page = response.content.decode()
    assert 'id="compare-summary"' in page and "80.0%" in page


def test_compare_series_is_404_when_any_run_is_not_visible(
    as_alice: Client, lab: Lab, django_assert_num_queries: Any
) -> None:
    mine = factories.make_run(lab.project)
    theirs = factories.make_run(lab.other_project)
    factories.add_metrics(theirs, "grad_norm", [1.0])
    url = reverse("runs-compare-series")
    assert (
        as_alice.get(url, {"ids": [str(mine.pk), str(theirs.pk)], "name": "grad_norm"}).status_code
        == 404
    )
    assert as_alice.get(url, {"ids": "nonsense"}).status_code == 404
    # 1 session, 2 user, 3 the runs (policy), 4 their points; plus the second-factor gate's.
    with django_assert_num_queries(4 + SECOND_FACTOR_QUERIES):
        as_alice.get(url, {"ids": [str(mine.pk)], "name": ["grad_norm", "lr"]})
