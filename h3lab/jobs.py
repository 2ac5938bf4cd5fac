"""Celery tasks: the one bridge between the ML core and Django.

A task takes ids and plain values, claims its row through :mod:`experiments.actions`, calls
the pure training function :func:`h3lab.train.train`, and records the outcome through
actions again. The Run row is the source of truth; every write is conditional on this
worker's claim, so duplicate deliveries, cancellations and reaped runs are all harmless.

The training itself runs in a child process under the queue's memory cap
(:mod:`h3lab.isolation`, ``H3LAB_RUN_MEMORY_LIMIT_MB``): a run that exhausts it fails with
that message and the worker goes on with its next job. The worker process keeps the claim,
the heartbeat thread and every database write; the child only trains and reports.

The disclosure jobs (staged release, grant expiry, export builds) are here too, as thin
wrappers around one disclosure function each. They keep the names they were registered under
in ``disclosure.tasks`` (``name=`` below), so queued messages, routes and the beat schedule
(:func:`h3lab.celery._beat_schedule`) stay valid.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Task

from h3lab.celery import app

log = logging.getLogger(__name__)

DAY = 24 * 3600


class Liveness:
    """Background heartbeat: every ``interval`` seconds refresh the run's heartbeat; when the
    claim is gone (cancelled, reaped) set ``stop`` so training returns at its next step."""

    def __init__(self, beat: Callable[[], bool], interval: float) -> None:
        self._beat = beat
        self._interval = interval
        self.stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="h3lab-heartbeat", daemon=True)

    def __enter__(self) -> Liveness:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        from django.db import connection

        try:
            while not self._done.wait(self._interval):
                try:
                    if not self._beat():
                        self.stop.set()
                        return
                except Exception:  # a DB blip must not kill training; the next beat retries
                    log.exception("heartbeat failed")
        finally:
            connection.close()


class ProgressRecorder:
    """Turns training callbacks into rate-limited progress writes and metric points."""

    def __init__(self, run_id: int, token: uuid.UUID, min_interval: float = 0.5) -> None:
        self.run_id, self.token = run_id, token
        self.min_interval = min_interval
        self._last = 0.0
        self._points: list[tuple[str, int, float]] = []
        self._fields: dict[str, Any] = {}
        self.log_lines: list[str] = []
        self.lost = False

    def progress(self, p: Any) -> None:
        self._fields.update(
            step=p.step,
            total_steps=p.total_steps,
            loss=p.loss,
            accuracy=p.accuracy,
            tokens_per_s=p.tokens_per_s,
            eta_s=p.eta_s,
        )
        self._points.append(("train_loss", p.step, float(p.loss)))
        if p.accuracy is not None:
            self._points.append(("train_accuracy", p.step, float(p.accuracy)))
        self._points.append(("tokens_per_s", p.step, float(p.tokens_per_s)))
        self._points.append(("lr", p.step, float(p.lr)))
        self.flush(force=p.step >= p.total_steps)

    def evaluation(self, e: Any) -> None:
        self._points.append(("test_loss", e.step, float(e.loss)))
        self._points.append(("test_accuracy", e.step, float(e.accuracy)))
        self._fields["test_accuracy"] = e.accuracy
        self.flush(force=True)

    def flush(self, force: bool = False) -> None:
        from experiments.actions.worker import do_record_progress

        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        points, self._points = self._points, []
        fields, self._fields = self._fields, {}
        if not do_record_progress(self.run_id, self.token, fields=fields, points=points):
            self.lost = True


def _device_name(requested: str) -> str:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and torch.cuda.is_available():
        return f"{requested} ({torch.cuda.get_device_name(0)})"
    return requested


def execute_run(run_id: int, *, task_id: str = "") -> str:
    """Claim and train one run; returns the outcome. Importable without a broker (tests)."""
    from django.conf import settings

    from experiments.actions.worker import (
        do_claim_run,
        do_complete_run,
        do_fail_run,
        do_record_heartbeat,
        is_cancelled,
    )
    from experiments.storage import run_workdir
    from h3lab.config import RunConfig
    from h3lab.isolation import MemoryLimitExceeded, TrainingFailed, train_isolated
    from h3lab.train import Callbacks

    claim = do_claim_run(run_id, host=socket.gethostname(), task_id=task_id)
    if claim is None:
        log.info("run %s is not queued; nothing to do (duplicate delivery or cancelled)", run_id)
        return "skipped"
    cfg = RunConfig.from_dict(claim.config)
    do_record_heartbeat(run_id, claim.token, device=_device_name(cfg.train.device))
    workdir = run_workdir(run_id)
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = ProgressRecorder(run_id, claim.token)
    liveness = Liveness(
        lambda: do_record_heartbeat(run_id, claim.token), settings.H3LAB_HEARTBEAT_S
    )
    with liveness:
        callbacks = Callbacks(
            on_progress=recorder.progress,
            on_eval=recorder.evaluation,
            should_stop=lambda: liveness.stop.is_set() or recorder.lost,
        )
        try:
            result = train_isolated(
                cfg,
                workdir,
                callbacks,
                resume=True,
                memory_limit_mb=settings.H3LAB_RUN_MEMORY_LIMIT_MB.get(claim.queue, 0),
            )
        except Exception as exc:  # the child's failures included, as the exceptions below
            recorder.flush(force=True)
            if isinstance(exc, MemoryLimitExceeded):
                error, trace = str(exc), ""
            elif isinstance(exc, TrainingFailed):
                error, trace = exc.error, exc.child_traceback
            else:
                error, trace = f"{type(exc).__name__}: {exc}", traceback.format_exc()
            do_fail_run(run_id, claim.token, error=error, traceback=trace)
            return "failed"
        recorder.flush(force=True)
    if result.status == "stopped":
        # Cancelled or reaped: the row already says so. A cancelled run never resumes, so its
        # checkpoint is garbage; a reaped one may be training again elsewhere from this folder.
        if is_cancelled(run_id):
            shutil.rmtree(workdir, ignore_errors=True)
        return "stopped"
    files = _output_files(workdir)
    done = do_complete_run(
        run_id,
        claim.token,
        result={
            "status": result.status,
            "step": result.step,
            "train_loss": result.train_loss,
            "test_loss": result.test_loss,
            "test_accuracy": result.test_accuracy,
            "best_test_accuracy": result.best_test_accuracy,
            "elapsed_s": result.elapsed_s,
            "device": result.device,
        },
        files=files,
        fields={"step": result.step, "test_accuracy": result.test_accuracy},
    )
    if done:
        shutil.rmtree(workdir, ignore_errors=True)
    return "succeeded" if done else "stopped"


def _output_files(workdir: Path) -> list[tuple[Path, str]]:
    """The files a finished run keeps as artifacts: final checkpoint, config, metrics, plots,
    log."""
    wanted: list[tuple[Path, str]] = []
    ckpt = workdir / "checkpoint"
    for name in ("model.safetensors", "config.json"):
        if (ckpt / name).is_file():
            wanted.append((ckpt / name, name))
    for path in sorted(workdir.iterdir()):
        if path.is_file() and path.suffix in (".json", ".png", ".svg", ".log", ".csv"):
            wanted.append((path, path.name))
    return wanted


@app.task(
    bind=True,
    name="h3lab.jobs.run_training",
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=int(os.environ.get("H3LAB_RUN_SOFT_LIMIT_S", 2 * DAY)),
    time_limit=int(os.environ.get("H3LAB_RUN_HARD_LIMIT_S", 2 * DAY + 600)),
    max_retries=0,
)
def run_training(self: Task[[int], str], run_id: int) -> str:
    """Train one run. Failures are recorded on the row, not retried: a deterministic error
    would fail again, and lost workers are handled by :func:`reap_stale_runs`."""
    try:
        return execute_run(run_id, task_id=self.request.id or "")
    finally:
        from django.db import close_old_connections

        close_old_connections()


@app.task(name="h3lab.jobs.reap_stale_runs", acks_late=True, time_limit=120, max_retries=3)
def reap_stale_runs() -> list[tuple[int, str]]:
    """Periodic (beat): requeue or fail runs whose worker stopped sending heartbeats."""
    from experiments.actions.worker import do_reap_stale_runs

    return [(r.run_id, r.outcome) for r in do_reap_stale_runs()]


# --- disclosure ---------------------------------------------------------------------------------
# Thin: each task calls one disclosure function, which re-checks every gate itself and is
# idempotent, so a duplicate delivery or an overlapping beat tick changes nothing twice.


@app.task(
    name="disclosure.tasks.release_due_findings",
    acks_late=True,
    soft_time_limit=120,
    time_limit=180,
    ignore_result=True,
)
def release_due_findings() -> list[tuple[int, str]]:
    """Periodic (beat), at each embargo instant: re-check quorum, objections, retractions and
    dependencies, then promote, or record why the release was held back."""
    from disclosure.actions.release import do_release_due

    return do_release_due()


@app.task(
    name="disclosure.tasks.warn_expiring_grants",
    acks_late=True,
    soft_time_limit=120,
    time_limit=180,
    ignore_result=True,
)
def warn_expiring_grants() -> int:
    """Periodic (beat): warn holders of grants about to lapse and announce lapsed ones."""
    from disclosure.actions.grants import do_warn_expiring_grants

    return do_warn_expiring_grants()


@app.task(
    name="disclosure.tasks.build_export",
    acks_late=True,
    soft_time_limit=3600,
    time_limit=3900,
    max_retries=0,
)
def build_export(export_id: int) -> str:
    """Build one requested bundle; the Export row records progress and the outcome. Sent by
    :func:`disclosure.actions.exports.do_request_export` after commit."""
    from disclosure.exports.build import build_export as build

    return build(export_id)


@app.task(
    name="disclosure.tasks.write_audit_checkpoint",
    acks_late=True,
    soft_time_limit=600,
    time_limit=660,
    ignore_result=True,
)
def write_audit_checkpoint() -> str:
    """Periodic (beat): sign the audit log's head into a checkpoint file outside the database.
    A log that no longer verifies is not signed; that is logged as an error (the alarm)."""
    from disclosure import audit

    try:
        cp, path = audit.write_checkpoint()
    except audit.AuditBroken as exc:
        log.error("audit checkpoint refused: %s", exc)
        return f"refused: {exc}"
    return f"{cp.tree_size} entries: {path or 'unchanged'}"
