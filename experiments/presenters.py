"""Read-only shaping of runs for pages and JSON: config tables, metric series, log tails.

Nothing here decides access — callers pass objects they already got from
:mod:`disclosure.policy` — and nothing here changes state.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from experiments.models import Artifact, MetricPoint, Run
from experiments.storage import ArtifactUnavailable, open_artifact, run_workdir

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


# --- series for the charts ----------------------------------------------------------------------

# What ``series.json`` answers per series by default, and the most a caller may ask for: the
# chart is ~560 px wide, so more points than this only cost bytes.
SERIES_MAX_POINTS = 1000
SERIES_MAX_POINTS_CAP = 5000
SERIES_MIN_POINTS = 4
# The compare page embeds every metric of every run it shows: fewer points per series.
COMPARE_MAX_POINTS = 400
SeriesPoint = list[float]


def downsample_minmax(points: list[SeriesPoint], max_points: int) -> list[SeriesPoint]:
    """At most ``max_points`` of ``points`` (``[step, value]`` in step order), chosen so the
    chart keeps its shape: the first and last points, then for each of equal-sized index
    buckets over the rest its lowest and highest value, in step order. A spike or a dip
    survives (a stride would drop it); the global minimum and maximum are always kept.
    Returns the points unchanged when there are no more than ``max_points``."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2 (the first and the last point)")
    if len(points) <= max_points:
        return list(points)
    first, inner, last = points[0], points[1:-1], points[-1]
    buckets = (max_points - 2) // 2
    out = [first]
    for b in range(buckets):
        bucket = inner[b * len(inner) // buckets : (b + 1) * len(inner) // buckets]
        if not bucket:
            continue
        lo = min(range(len(bucket)), key=lambda i: bucket[i][1])
        hi = max(range(len(bucket)), key=lambda i: bucket[i][1])
        out.extend(bucket[i] for i in sorted({lo, hi}))
    out.append(last)
    return out


def metric_names(run_ids: Iterable[int]) -> list[str]:
    """Every metric name recorded for ``run_ids``, sorted (one query)."""
    names = (
        MetricPoint.objects.filter(run_id__in=list(run_ids))
        .order_by("name")
        .values_list("name", flat=True)
        .distinct()
    )
    return list(names)


def named_series(
    run_ids: Iterable[int], names: Iterable[str], *, max_points: int = SERIES_MAX_POINTS
) -> tuple[dict[int, dict[str, list[SeriesPoint]]], int]:
    """Like :func:`metric_series` but for any metric ``names``, each series cut to
    ``max_points`` with :func:`downsample_minmax`; one query. The cursor is the largest point
    id read, so ``progress.json?after=cursor`` continues with newer points only."""
    points = (
        MetricPoint.objects.filter(run_id__in=list(run_ids), name__in=list(names))
        .order_by("run_id", "name", "step")
        .values_list("pk", "run_id", "name", "step", "value")
    )
    series: dict[int, dict[str, list[SeriesPoint]]] = {}
    cursor = 0
    for pk, run_id, name, step, value in points:
        series.setdefault(run_id, {}).setdefault(name, []).append([step, value])
        cursor = max(cursor, pk)
    for by_name in series.values():
        for name, pts in by_name.items():
            by_name[name] = downsample_minmax(pts, max_points)
    return series, cursor


def compare_summary(runs: list[Run]) -> list[dict[str, Any]]:
    """The compare page's metrics table: per run its final numbers (from the row), best test
    accuracy and lowest test loss (one aggregate query), steps and duration."""
    from django.db.models import Max, Min

    best: dict[tuple[int, str], dict[str, Any]] = {
        (row["run_id"], row["name"]): dict(row)
        for row in MetricPoint.objects.filter(
            run_id__in=[r.pk for r in runs], name__in=("test_accuracy", "test_loss")
        )
        .values("run_id", "name")
        .annotate(top=Max("value"), bottom=Min("value"))
        .order_by()
    }
    rows = []
    for run in runs:
        acc = best.get((run.pk, "test_accuracy"), {})
        loss = best.get((run.pk, "test_loss"), {})
        rows.append(
            {
                "run": run,
                "final_test_accuracy": run.test_accuracy,
                "best_test_accuracy": acc.get("top"),
                "final_loss": run.loss,
                "best_test_loss": loss.get("bottom"),
                "steps": run.step,
                "duration_s": run.duration_s,
            }
        )
    return rows


# --- live log -----------------------------------------------------------------------------------

LIVE_LOG_LINES = 200
_TAIL_BYTES = 64 * 1024  # enough for LIVE_LOG_LINES lines of a training log


def file_tail(path: Path, lines: int) -> list[str] | None:
    """The last ``lines`` lines of a text file, reading at most its last 64 KiB; None if
    there is no such file. A partial first line (cut by the window) is dropped."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    parts = data.split(b"\n")
    if size > _TAIL_BYTES:
        parts = parts[1:]
    if parts and parts[-1] == b"":
        parts.pop()
    return [p.decode("utf-8", "replace") for p in parts[-lines:]] if lines > 0 else []


def run_log_tail(
    run: Run, artifacts: Iterable[Artifact], lines: int = LOG_TAIL_LINES
) -> tuple[list[str] | None, str]:
    """The last ``lines`` of a run's log and where they came from: ``"live"`` — the
    ``train.log`` its worker is writing in the run's folder, while the run is active;
    ``"artifact"`` — the stored (encrypted) log once it is final, or when the folder is gone;
    ``""`` — no log. The caller has the run from the policy; nothing here decides access."""
    if run.is_active:
        live = file_tail(run_workdir(run.pk) / LOG_ARTIFACT, lines)
        if live is not None:
            return live, "live"
    log = find_log(artifacts)
    tail = log_tail(log, lines) if log else None
    return tail, "artifact" if tail is not None else ""
