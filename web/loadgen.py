"""The load generator of ``manage.py bench_web``: a bounded closed loop of HTTP clients.

Runs as its own process (``python -m web.loadgen PLAN OUT``), standard library only, so the
clients do not share an interpreter (or a GIL) with the server or the command. Each client is a
thread with its own signed-in session; it sends one request, waits for the answer, picks the
next endpoint at random from the mix and sends again, with no think time, until the time is up.
A client that polls the progress JSON sends back the ETag it last got for that URL, as a
browser does. Requests finished during the warm-up are not recorded.

The plan (JSON): ``base_url``, ``host``, ``duration_s``, ``warmup_s``, ``seed``, and
``clients``: a list of ``{"cookie": "...", "paths": {endpoint: [path, ...]}}``. The output
(JSON): one record per request, ``[endpoint, status, latency_s, app_ms, db_ms, queries,
cpu_ms]`` (the last four from the ``Server-Timing`` header; -1 when absent), and the wall time.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import sys
import threading
import time
from typing import Any
from urllib.parse import urlsplit

Record = tuple[str, int, float, float, float, int, float]

_APP = re.compile(r"app;dur=([0-9.]+)")
_CPU = re.compile(r"cpu;dur=([0-9.]+)")
_DB = re.compile(r'db;dur=([0-9.]+);desc="(\d+) queries"')


def server_timing(header: str | None) -> tuple[float, float, int, float]:
    """(app ms, db ms, queries, cpu ms) from a ``Server-Timing`` header; -1 for what is
    missing."""
    if not header:
        return -1.0, -1.0, -1, -1.0
    app, cpu, db = _APP.search(header), _CPU.search(header), _DB.search(header)
    return (
        float(app.group(1)) if app else -1.0,
        float(db.group(1)) if db else -1.0,
        int(db.group(2)) if db else -1,
        float(cpu.group(1)) if cpu else -1.0,
    )


def client_loop(
    plan: dict[str, Any], client: dict[str, Any], index: int, out: list[Record]
) -> None:
    url = urlsplit(plan["base_url"])
    rng = random.Random(plan["seed"] * 1000 + index)  # noqa: S311 (a reproducible mix)
    endpoints = sorted(client["paths"])
    etags: dict[str, str] = {}
    start = time.monotonic()
    record_from = start + plan["warmup_s"]
    stop = record_from + plan["duration_s"]
    headers = {
        "Host": plan["host"],
        "Cookie": client["cookie"],
        # The site sits behind a TLS proxy (compose: USE_X_FORWARDED_PROTO=1).
        "X-Forwarded-Proto": "https",
        "Accept": "text/html,application/json",
    }
    while (now := time.monotonic()) < stop:
        endpoint = rng.choice(endpoints)
        path = rng.choice(client["paths"][endpoint])
        extra = {"If-None-Match": etags[path]} if path in etags else {}
        status, app, db, queries, cpu = 0, -1.0, -1.0, -1, -1.0
        began = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
            conn.request("GET", path, headers={**headers, **extra})
            response = conn.getresponse()
            response.read()
            status = response.status
            app, db, queries, cpu = server_timing(response.getheader("Server-Timing"))
            if etag := response.getheader("ETag"):
                etags[path] = etag
            conn.close()
        except (OSError, http.client.HTTPException):
            status = 0
        latency = time.perf_counter() - began
        if now >= record_from:
            out.append((endpoint, status, latency, app, db, queries, cpu))


def run(plan: dict[str, Any]) -> dict[str, Any]:
    results: list[list[Record]] = [[] for _ in plan["clients"]]
    threads = [
        threading.Thread(target=client_loop, args=(plan, c, i, results[i]), daemon=True)
        for i, c in enumerate(plan["clients"])
    ]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began - plan["warmup_s"]
    return {"wall_s": wall, "records": [r for per in results for r in per]}


def main(argv: list[str]) -> int:
    plan_path, out_path = argv
    with open(plan_path) as f:
        plan = json.load(f)
    result = run(plan)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
