"""The platform benchmark command runs end to end at a tiny size and writes its JSON report.

Not a timed test: it checks the command works and reports what docs/benchmarks.md quotes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]


def test_bench_platform_writes_latency_and_page_costs(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    test_db = connection.settings_dict["NAME"]

    call_command(
        "bench_platform",
        "--runs=60",
        "--samples=2",
        "--requests=2",
        "--brokers=filesystem",
        f"--out={out}",
    )

    report = json.loads(out.read_text())
    assert set(report) >= {"machine", "params", "database", "submit_to_running", "pages"}
    latency = report["submit_to_running"]["filesystem"]
    assert latency["n"] == 2
    assert 0 < latency["median_s"] <= latency["p95_s"] <= latency["max_s"]
    assert set(report["pages"]) == {"runs_list", "run_page", "run_progress_json"}
    for page in report["pages"].values():
        assert page["runs_in_db"] == 60
        assert page["queries"] > 0
        assert set(page) >= {"median_s", "p95_s", "queries_at_small_size", "constant_queries"}
    assert connection.settings_dict["NAME"] == test_db, "the scratch database was dropped"
