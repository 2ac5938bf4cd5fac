"""The run page's charts and live log in a real browser: pick a metric, toggle the log scale,
move the smoothing slider, hover for a value, drag to zoom and double-click to reset, and see
the lines the worker appends to train.log while the run is running — with the site's
Content-Security-Policy refusing nothing (a refusal is a console error)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from experiments.models import RunStatus
from experiments.storage import run_workdir
from tests import factories
from tests.conftest import Lab
from tests.e2e.test_layout import sign_in

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.browser,
    pytest.mark.django_db(transaction=True),
    pytest.mark.timeout(300),
]


def test_a_researcher_explores_a_running_runs_charts_and_reads_its_live_log(
    lab: Lab, live_server: Any, page: Any
) -> None:
    run = factories.make_run(lab.project, name="live", status=RunStatus.RUNNING, step=400)
    factories.add_metrics(run, "train_loss", [2.0 * math.exp(-i / 10) + 0.01 for i in range(40)])
    factories.add_metrics(
        run, "test_loss", [2.1 * math.exp(-i / 10) + 0.02 for i in range(0, 40, 5)]
    )
    factories.add_metrics(run, "grad_norm", [1.0 + (i % 5) for i in range(40)])
    workdir = run_workdir(run.pk)
    workdir.mkdir(parents=True)
    log = workdir / "train.log"
    log.write_text("".join(f"step {i} loss 1.0\n" for i in range(5)))

    refused: list[str] = []
    page.on(
        "console",
        lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    page.set_viewport_size({"width": 1280, "height": 900})
    sign_in(page, live_server.url, lab.alice)
    page.goto(f"{live_server.url}/runs/{run.pk}/")

    chart = page.locator("#chart-0")
    chart.locator("path.series").first.wait_for()
    assert page.locator("#log-panel pre.log").get_attribute("aria-live") == "polite"

    # The picker offers every recorded metric, train and test grouped.
    picker = page.locator('select[data-metric-picker="chart-0"]')
    picker.locator("option[value=grad_norm]").wait_for(state="attached")
    assert set(picker.locator("option").all_inner_texts()) >= {"grad_norm", "loss"}
    picker.select_option("grad_norm")
    page.wait_for_function(
        "() => document.getElementById('chart-0-title').textContent === 'Grad norm'"
    )
    picker.select_option("loss")
    page.wait_for_function("() => document.getElementById('chart-0-title').textContent === 'Loss'")
    assert chart.locator("path.series").count() == 2, "train and test"

    page.check("#log-scale")
    chart.locator("svg[aria-label$='(log scale)']").wait_for()

    page.focus("#smoothing")
    page.keyboard.press("End")
    assert page.locator("#smoothing-value").inner_text() == "0.99"
    assert chart.locator("path.series-raw").count() == 2, "the raw lines stay, faint, behind"

    box = chart.locator("rect.chart-overlay").bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tip = chart.locator(".chart-tip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert text.startswith("step ") and "train:" in text and "(raw " in text

    page.mouse.move(box["x"] + box["width"] * 0.2, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=5)
    page.mouse.up()
    page.wait_for_function("() => document.getElementById('chart-0').dataset.zoomed === '1'")
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    page.wait_for_function("() => document.getElementById('chart-0').dataset.zoomed === '0'")

    # The live log: the page shows the lines at load, then the ones the worker appends.
    log_view = page.locator("#log-panel pre.log")
    assert "step 4 loss 1.0" in log_view.inner_text()
    with log.open("a") as f:
        f.write("step 5 loss 0.5\nstep 6 loss 0.25\n")
    log_view.filter(has_text="step 6 loss 0.25").wait_for(timeout=20_000)
    assert log_view.inner_text().count("step 4 loss 1.0") == 1, "appended, not repeated"

    assert refused == []


def test_compare_draws_train_and_test_per_run_for_a_picked_metric(
    lab: Lab, live_server: Any, page: Any
) -> None:
    runs = [factories.make_run(lab.project, name=n, test_accuracy=0.5) for n in ("a", "b")]
    for i, run in enumerate(runs):
        factories.add_metrics(run, "train_loss", [2.0 / (j + 1 + i) for j in range(30)])
        factories.add_metrics(run, "test_loss", [2.2 / (j + 1 + i) for j in range(0, 30, 5)])
        factories.add_metrics(run, "grad_norm", [1.0 + i + (j % 3) for j in range(30)])
    refused: list[str] = []
    page.on(
        "console",
        lambda msg: refused.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    sign_in(page, live_server.url, lab.alice)
    page.goto(f"{live_server.url}/runs/compare/?ids={runs[0].pk}&ids={runs[1].pk}")

    chart = page.locator("#chart-0")
    chart.locator("path.series").first.wait_for()
    assert chart.locator("path.series").count() == 4, "train and test for each of two runs"
    assert chart.locator("path.series[stroke-dasharray]").count() == 2, "train dashed"
    page.locator('select[data-metric-picker="chart-0"]').select_option("grad_norm")
    page.wait_for_function(
        "() => document.getElementById('chart-0-title').textContent === 'Grad norm'"
    )
    chart.locator("svg[aria-label^='grad norm']").wait_for()
    assert chart.locator("path.series").count() == 2, "one grad_norm line per run"
    assert page.locator("#compare-summary tbody tr").count() == 2
    assert refused == []
