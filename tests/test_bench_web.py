"""The pieces of ``manage.py bench_web`` that decide what its table says: the Server-Timing
header the server adds (only when asked), how the load generator reads it, and how requests
become rows and goals."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from tests.conftest import Lab
from web.loadgen import server_timing
from web.management.commands.bench_web import GOALS, goals, percentile, summarise

pytestmark = pytest.mark.django_db


def test_responses_carry_no_server_timing_unless_the_benchmark_asks(
    as_alice: Client, settings: object
) -> None:
    assert "Server-Timing" not in as_alice.get(reverse("runs"))
    settings.H3LAB_SERVER_TIMING = True  # type: ignore[attr-defined]
    with CaptureQueriesContext(connection) as ctx:
        response = as_alice.get(reverse("runs"))
    app, db, queries, cpu = server_timing(response["Server-Timing"])
    assert app > 0 and 0 <= db <= app and cpu >= 0
    assert queries == len(ctx.captured_queries) > 0


def test_a_missing_header_reads_as_unknown_not_as_zero() -> None:
    assert server_timing(None) == (-1.0, -1.0, -1, -1.0)
    header = 'app;dur=12.50, cpu;dur=9.00, db;dur=1.25;desc="7 queries"'
    assert server_timing(header) == (12.5, 1.25, 7, 9.0)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 99)) == (
        50.0,
        95.0,
        99.0,
    )


def test_redirects_and_failures_count_as_errors_and_not_modified_does_not() -> None:
    records = [
        ["progress", 200, 0.010, 1.0, 0.2, 5],
        ["progress", 304, 0.004, 0.8, 0.1, 4],
        ["progress", 302, 0.004, 0.8, 0.1, 3],
        ["runs list", 0, 0.5, -1, -1, -1],
    ]
    rows = summarise(records, duration=2.0)
    assert rows["progress"]["errors"] == 1 and rows["progress"]["not_modified"] == 1
    assert rows["runs list"]["errors"] == 1 and rows["runs list"]["queries_min"] == -1
    assert rows["all"]["requests"] == 4 and rows["all"]["rps"] == 2.0
    assert (rows["progress"]["queries_min"], rows["progress"]["queries_max"]) == (3, 5)


def test_the_goals_say_which_are_missed() -> None:
    fast = [[name, 200, 0.01, 2.0, 0.5, 5] for name in ("finding page", "progress") * 300]
    slow = [["finding page", 200, 0.9, 40.0, 5.0, 29]] * 10
    levels = {10: summarise(fast, 1.0), 50: summarise(fast + slow, 1.0)}
    checked = {g["goal"]: g for g in goals(levels)}
    assert checked["throughput at 50 clients (req/s)"]["met"] is True
    assert checked["finding page queries (max)"] == {
        "goal": "finding page queries (max)",
        "value": 29,
        "limit": GOALS["finding_page_queries"],
        "met": False,
    }
    assert checked["progress JSON server p50 (ms)"]["met"] is True
    assert checked["most queries per endpoint the same at every level"]["met"] is False


def test_the_load_generator_runs_a_closed_loop_against_a_server(lab: Lab) -> None:
    """One client, a tiny local server standing in for gunicorn: requests are recorded with
    their status and timing, the ETag is sent back, nothing before the warm-up ends."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from web.loadgen import run

    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("If-None-Match"))
            self.send_response(304 if self.headers.get("If-None-Match") else 200)
            self.send_header("ETag", '"v1"')
            timing = 'app;dur=1.00, cpu;dur=0.50, db;dur=0.10;desc="2 queries"'
            self.send_header("Server-Timing", timing)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        plan = {
            "base_url": f"http://127.0.0.1:{server.server_address[1]}",
            "host": "127.0.0.1",
            "duration_s": 0.3,
            "warmup_s": 0.1,
            "seed": 1,
            "clients": [{"cookie": "s=1", "paths": {"progress": ["/p.json"]}}],
        }
        result = run(plan)
    finally:
        server.shutdown()
    records = result["records"]
    assert records and len(records) < len(seen)  # warm-up requests are not recorded
    assert {r[1] for r in records} == {304}
    assert seen[0] is None and set(seen[1:]) == {'"v1"'}
    assert records[0][3:] == (1.0, 0.1, 2, 0.5)
