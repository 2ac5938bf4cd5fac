"""Read-only shaping of runs for pages and JSON: config tables, metric series, log tails.

Nothing here decides access — callers pass objects they already got from
:mod:`disclosure.policy` — and nothing here changes state.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable
from typing import Any

from experiments.models import Artifact, MetricPoint, Run
from experiments.storage import ArtifactUnavailable, open_artifact

# The series the run page and the compare page draw.
CHART_SERIES = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
LOG_ARTIFACT = "train.log"
LOG_TAIL_LINES = 50


def flatten_config(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1e-3}}`` → ``{"train.lr": 1e-3}``; lists become comma-joined text."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = ", ".join(str(v) for v in value)
        else:
            flat[name] = value
    return flat


def config_sections(config: dict[str, Any]) -> list[tuple[str, list[tuple[str, Any]]]]:
    """The config as (section, [(field, value)]) for a summary table, model first."""
    order = ["model", "task", "train"]
    sections = [(s, config[s]) for s in order if isinstance(config.get(s), dict)]
    return [(name, sorted(flatten_config(body).items())) for name, body in sections]


def config_diff(runs: Iterable[Run]) -> list[dict[str, Any]]:
    """One row per dotted config key across ``runs``: the value for each run (``None`` where a
    run lacks the key) and whether the runs disagree."""
    flats = [flatten_config({"preset": r.preset, **r.config}) for r in runs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [f.get(key) for f in flats]
        rows.append({"key": key, "values": values, "differs": len({repr(v) for v in values}) > 1})
    return rows


def metric_series(
    run_ids: Iterable[int], *, after: int = 0
) -> tuple[dict[int, dict[str, list[list[float]]]], int]:
    """Chart series for several runs in one query: ``{run_id: {name: [[step, value], …]}}``
    plus a cursor (the largest point id seen). Pass the cursor back as ``after`` to get only
    newer points — ids grow with insertion, so a test-accuracy point written late for an
    early step is still picked up, which a step cursor would miss."""
    points = (
        MetricPoint.objects.filter(run_id__in=list(run_ids), name__in=CHART_SERIES, pk__gt=after)
        .order_by("pk")
        .values_list("pk", "run_id", "name", "step", "value")
    )
    series: dict[int, dict[str, list[list[float]]]] = {}
    cursor = after
    for pk, run_id, name, step, value in points:
        series.setdefault(run_id, {}).setdefault(name, []).append([step, value])
        cursor = max(cursor, pk)
    return series, cursor


def progress_etag(run: Run, *, after: int = 0) -> str:
    """A validator for :func:`progress_payload`: changes whenever anything it shows may have.
    Metric points are written with a heartbeat (``do_record_progress``) and every state change
    moves status, attempt, step, heartbeat or finish time, so those and the cursor suffice."""
    parts = (
        run.pk,
        run.status,
        run.attempt,
        run.step,
        run.heartbeat_at,
        run.started_at,
        run.finished_at,
        run.loss,
        run.test_accuracy,
        len(run.error),
        after,
    )
    digest = hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
    return f'"{digest}"'


def progress_payload(run: Run, *, after: int = 0) -> dict[str, Any]:
    """What the run page polls: live status, progress numbers and new metric points."""
    series, cursor = metric_series([run.pk], after=after)

    def iso(value: Any) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": run.pk,
        "status": run.status,
        "active": run.is_active,
        "step": run.step,
        "total_steps": run.total_steps,
        "fraction": round(run.progress_fraction, 4),
        "loss": run.loss,
        "accuracy": run.accuracy,
        "test_accuracy": run.test_accuracy,
        "tokens_per_s": run.tokens_per_s,
        "eta_s": run.eta_s,
        "attempt": run.attempt,
        "device": run.device,
        "worker_host": run.worker_host,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "heartbeat_at": iso(run.heartbeat_at),
        "error": run.error,
        "series": series.get(run.pk, {}),
        "cursor": cursor,
    }


def find_log(artifacts: Iterable[Artifact]) -> Artifact | None:
    return next((a for a in artifacts if a.name == LOG_ARTIFACT), None)


def log_tail(artifact: Artifact, lines: int = LOG_TAIL_LINES) -> list[str] | None:
    """The last ``lines`` lines of a log artifact, or None if storage lost the file."""
    try:
        chunks = open_artifact(artifact)
    except (FileNotFoundError, ArtifactUnavailable):
        return None
    tail: deque[bytes] = deque(maxlen=lines)
    partial = b""
    for chunk in chunks:
        *complete, partial = (partial + chunk).split(b"\n")
        tail.extend(complete)
    if partial:
        tail.append(partial)
    return [line.decode("utf-8", "replace") for line in tail]
