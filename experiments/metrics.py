"""Bounded metric storage: downsampling on write, the raw series kept as a file.

A long GPU run reports up to four metric events a second; two days of that would be millions
of ``MetricPoint`` rows, and the run page's chart reads every stored point of its series. So
the database keeps at most about :data:`MAX_POINTS_PER_SERIES` points of each training series:
a point is stored when its step is a multiple of the run's *stride*
(``ceil(total_steps / MAX_POINTS_PER_SERIES)``), and the last step always. Evaluation series
(one point per evaluation, which the config already bounds) are stored whole. Every point, kept
or not, is appended to ``metrics-raw.csv`` in the run's working directory, which the worker
stores as an artifact with the run's other outputs when it completes
(:func:`h3lab.jobs._output_files`).

A resumed attempt replays steps it already logged: the table keeps the first value (the unique
constraint), the raw file has both lines.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from typing import Any

from experiments.models import Run
from experiments.storage import run_workdir

MAX_POINTS_PER_SERIES = 1000
RAW_FILE = "metrics-raw.csv"
# Written once per evaluation: bounded by the config's eval_every, kept whole.
EVALUATION_SERIES = frozenset({"test_loss", "test_accuracy"})

Point = tuple[str, int, float]


def stride(total_steps: int) -> int:
    """Store one training point every ``stride`` steps: at most MAX_POINTS_PER_SERIES (+1)."""
    return max(1, -(-max(0, total_steps) // MAX_POINTS_PER_SERIES))


def downsample(points: Sequence[Point], total_steps: int) -> list[Point]:
    """The points the table keeps (a pure function of the points and the run's length)."""
    every = stride(total_steps)
    return [
        (name, step, value)
        for name, step, value in points
        if name in EVALUATION_SERIES or step % every == 0 or step >= total_steps
    ]


def archive_raw(run_id: int, points: Sequence[Point]) -> None:
    """Append every point to the run's raw series file (an artifact once the run completes)."""
    if not points:
        return
    workdir = run_workdir(run_id)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / RAW_FILE
    new = not path.exists()
    with path.open("a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        if new:
            writer.writerow(["name", "step", "value"])
        writer.writerows(points)


def points_to_store(run_id: int, points: Sequence[Point], fields: dict[str, Any]) -> list[Point]:
    """What :func:`experiments.actions.worker.do_record_progress` writes: the raw points go to
    the file, the downsampled ones to the table. ``fields`` (the progress update) carries the
    run's length when the trainer reports it; otherwise it is read from the row."""
    if not points:
        return []
    archive_raw(run_id, points)
    total = fields.get("total_steps")
    if total is None:
        total = Run.objects.filter(pk=run_id).values_list("total_steps", flat=True).first() or 0
    return downsample(points, int(total))
