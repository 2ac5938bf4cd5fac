"""Celery tasks: the one bridge between the ML core and Django.

A task takes ids and plain values, claims its row through :mod:`experiments.actions`, calls
the pure training function :func:`h3lab.train.train`, and records the outcome through
actions again. The Run row is the source of truth; every write is conditional on this
worker's claim, so duplicate deliveries, cancellations and reaped runs are all harmless.

The training itself runs in a child process under the queue's memory cap
(:mod:`h3lab.isolation`, ``H3LAB_RUN_MEMORY_LIMIT_MB``): a run that exhausts it fails with
that message and the worker goes on with its next job. The worker process keeps the claim,
the heartbeat thread and every database write; the child only trains and reports.

Faults (docs/operations.md#faults): a run fails only for reasons of its own, the child's
:class:`~h3lab.isolation.TrainingFailed` or :class:`~h3lab.isolation.MemoryLimitExceeded`.
Database and broker errors (:mod:`h3lab.transient`) are retried with backoff; past the budget
the attempt stops at a checkpoint and is left to the reaper, never failed. A warm shutdown
(SIGTERM, redeploy) checkpoints and requeues the run without using an attempt.

The disclosure jobs (staged release, grant expiry, export builds) are here too, as thin
wrappers around one disclosure function each. They keep the names they were registered under
in ``disclosure.tasks`` (``name=`` below), so queued messages, routes and the beat schedule
(:func:`h3lab.celery._beat_schedule`) stay valid.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from celery import Task
from celery.exceptions import Reject
from celery.signals import worker_shutting_down

from h3lab.celery import app
from h3lab.transient import TransientError, is_transient, reset_connection, retry_transient

if TYPE_CHECKING:
    from experiments.actions.worker import Claim
    from h3lab.config import RunConfig
    from h3lab.train import TrainResult

log = logging.getLogger(__name__)

DAY = 24 * 3600

# Set when this worker starts a warm shutdown (SIGTERM: redeploy, docker stop): every run it
# trains checkpoints, goes back to the queue without using an attempt, and the task returns.
SHUTTING_DOWN = threading.Event()


@worker_shutting_down.connect
def _on_worker_shutting_down(**kwargs: object) -> None:
    SHUTTING_DOWN.set()


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
                except Exception as exc:  # a DB blip must not kill training; next beat retries
                    log.warning("heartbeat failed: %s: %s", type(exc).__name__, exc)
                    reset_connection()  # a connection the server cut never recovers by itself
        finally:
            connection.close()


class ProgressRecorder:
    """Turns training callbacks into rate-limited progress writes and metric points.

    A write that fails transiently keeps its points and fields for the next one, so a database
    blip loses nothing and does not pause training; when writes have failed for longer than
    ``retry_budget_s``, ``unreachable`` is set and training stops at a checkpoint."""

    def __init__(
        self,
        run_id: int,
        token: uuid.UUID,
        min_interval: float = 0.5,
        retry_budget_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_id, self.token = run_id, token
        self.min_interval = min_interval
        self.retry_budget_s = retry_budget_s
        self._clock = clock
        self._last = -math.inf
        self._points: list[tuple[str, int, float]] = []
        self._fields: dict[str, Any] = {}
        self._failing_since: float | None = None
        self.log_lines: list[str] = []
        self.lost = False
        self.unreachable = False
        self.analysis = False  # an analysis reports phases as steps: no training metrics

    def progress(self, p: Any) -> None:
        if self.analysis:
            self._fields.update(step=p.step, total_steps=p.total_steps)
            self.flush(force=True)
            return
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

        now = self._clock()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        points, self._points = self._points, []
        fields, self._fields = self._fields, {}
        try:
            written = do_record_progress(self.run_id, self.token, fields=fields, points=points)
        except Exception as exc:
            if not is_transient(exc):
                raise
            reset_connection()
            self._points = points + self._points  # nothing is lost: sent with the next write
            self._fields = {**fields, **self._fields}
            if self._failing_since is None:
                self._failing_since = now
                log.warning("run %s: progress write failed (%s); retrying", self.run_id, exc)
            if now - self._failing_since > self.retry_budget_s:
                self.unreachable = True
            return
        self._failing_since = None
        if not written:
            self.lost = True

    def flush_retrying(self) -> bool:
        """The final write, retried with backoff; False if the database stayed away."""
        try:
            retry_transient(
                lambda: self._flush_or_raise(),
                budget_s=self.retry_budget_s,
                what=f"run {self.run_id}: final progress",
            )
        except TransientError:
            return False
        return True

    def _flush_or_raise(self) -> None:
        from django.db import OperationalError

        self.flush(force=True)
        if self._failing_since is not None:  # flush kept the data: fail this try for the retry
            raise OperationalError("progress write failed")


def _device_name(requested: str) -> str:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and torch.cuda.is_available():
        return f"{requested} ({torch.cuda.get_device_name(0)})"
    return requested


def execute_run(run_id: int, *, task_id: str = "") -> str:
    """Claim and train one run; returns the outcome. Importable without a broker (tests).

    Outcomes: ``succeeded``, ``failed`` (for a reason of its own), ``stopped`` (cancelled, or
    the claim went elsewhere), ``requeued`` (warm shutdown: back in the queue, no attempt
    used), ``interrupted`` (the database stayed away past the retry budget: the run is left
    running with its checkpoint for the reaper) and ``skipped`` (not queued: a duplicate)."""
    from django.conf import settings

    from experiments.actions.worker import do_claim_run, do_record_heartbeat

    budget = settings.H3LAB_TRANSIENT_RETRY_S
    try:
        claim = retry_transient(
            lambda: do_claim_run(run_id, host=socket.gethostname(), task_id=task_id),
            budget_s=budget,
            what=f"run {run_id}: claim",
        )
    except TransientError:
        log.warning("run %s: database unreachable, not claimed; the reaper re-sends it", run_id)
        return "interrupted"
    if claim is None:
        log.info("run %s is not queued; nothing to do (duplicate delivery or cancelled)", run_id)
        return "skipped"
    from h3lab.config import RunConfig

    # An analysis run's config is its source's training config plus its spec ("analysis").
    cfg = RunConfig.from_dict({k: v for k, v in claim.config.items() if k != "analysis"})
    try:
        retry_transient(
            lambda: do_record_heartbeat(run_id, claim.token, device=_device_name(cfg.train.device)),
            budget_s=budget,
            what=f"run {run_id}: first heartbeat",
        )
    except TransientError:
        return "interrupted"
    if claim.kind != "train":
        outcome = _analyse_claimed(claim)
        if outcome == "stopped":
            _drop_cancelled_workdir(run_id)
        return outcome
    return _train_claimed(claim, cfg)


def _drop_cancelled_workdir(run_id: int) -> None:
    """An analysis cancelled while it finished (its results refused) leaves the decrypted
    source checkpoint in its folder: remove it now rather than at the reaper's next sweep."""
    from experiments.actions.worker import do_archive_workdir, is_cancelled
    from experiments.storage import run_workdir

    # SECURITY: plaintext weights of a restricted run are not left on disk.
    with contextlib.suppress(Exception):  # the database away: the reaper's sweep does it
        if is_cancelled(run_id):
            do_archive_workdir(run_id, run_workdir(run_id))


def _analyse_claimed(claim: Claim) -> str:
    """Run a claimed analysis: decrypt its source run's checkpoint into the working folder,
    analyse it in the isolated child, and record the outcome as a training run's would be
    (see :func:`execute_run`); cancellation, the reaper and retries are the same."""
    from django.conf import settings

    from experiments.actions.runs import fetch_source_checkpoint
    from experiments.actions.worker import do_record_heartbeat
    from experiments.storage import run_workdir
    from h3lab.isolation import (
        analyse_isolated,
    )
    from h3lab.train import Callbacks

    run_id, token = claim.run_id, claim.token
    workdir = run_workdir(run_id)
    workdir.mkdir(parents=True, exist_ok=True)
    source_dir = workdir / "source"  # not under checkpoint/: never stored again as an output
    recorder = ProgressRecorder(run_id, token, retry_budget_s=settings.H3LAB_TRANSIENT_RETRY_S)
    recorder.analysis = True
    try:
        retry_transient(
            lambda: fetch_source_checkpoint(claim.source_id, source_dir),
            budget_s=settings.H3LAB_TRANSIENT_RETRY_S,
            what=f"run {run_id}: fetch the source checkpoint",
        )
    except TransientError:
        return "interrupted"
    except Exception as exc:  # missing, shredded or undecryptable: this analysis cannot run
        return _fail(recorder, workdir, error=f"{type(exc).__name__}: {exc}", trace="")
    liveness = Liveness(lambda: do_record_heartbeat(run_id, token), settings.H3LAB_HEARTBEAT_S)
    with liveness:
        callbacks = Callbacks(
            on_progress=recorder.progress,
            should_stop=lambda: _should_stop(liveness, recorder),
        )
        result, outcome = _in_child(
            run_id,
            recorder,
            workdir,
            lambda: analyse_isolated(
                claim.config.get("analysis", {}),
                source_dir,
                workdir,
                callbacks,
                memory_limit_mb=settings.H3LAB_RUN_MEMORY_LIMIT_MB.get(claim.queue, 0),
            ),
        )
        if outcome is not None or result is None:
            return outcome or "interrupted"
    if result.status == "stopped":
        return _stopped(recorder, liveness, workdir)
    if not recorder.flush_retrying():
        return "interrupted"
    summary = result.history[0] if result.history else {}
    accuracy = summary.get("accuracy")
    return _complete(
        recorder,
        workdir,
        result,
        extra={"kind": claim.kind, "summary": summary},
        fields={"step": result.step, "test_accuracy": accuracy},
    )


def _train_claimed(claim: Claim, cfg: RunConfig) -> str:
    """Train a claimed run and record how it ended (see :func:`execute_run`)."""
    from django.conf import settings

    from experiments.actions.worker import do_record_heartbeat
    from experiments.storage import run_workdir
    from h3lab.isolation import (
        train_isolated,
    )
    from h3lab.train import Callbacks

    run_id, token = claim.run_id, claim.token
    workdir = run_workdir(run_id)
    workdir.mkdir(parents=True, exist_ok=True)
    recorder = ProgressRecorder(run_id, token, retry_budget_s=settings.H3LAB_TRANSIENT_RETRY_S)
    liveness = Liveness(lambda: do_record_heartbeat(run_id, token), settings.H3LAB_HEARTBEAT_S)
    with liveness:
        callbacks = Callbacks(
            on_progress=recorder.progress,
            on_eval=recorder.evaluation,
            should_stop=lambda: _should_stop(liveness, recorder),
        )
        result, outcome = _in_child(
            run_id,
            recorder,
            workdir,
            lambda: train_isolated(
                cfg,
                workdir,
                callbacks,
                resume=True,
                memory_limit_mb=settings.H3LAB_RUN_MEMORY_LIMIT_MB.get(claim.queue, 0),
            ),
        )
        if outcome is not None or result is None:
            return outcome or "interrupted"
    if result.status == "stopped":
        return _stopped(recorder, liveness, workdir)
    if not recorder.flush_retrying():
        return "interrupted"
    return _complete(recorder, workdir, result)


def _should_stop(liveness: Liveness, recorder: ProgressRecorder) -> bool:
    """Whether the job in the child should checkpoint and stop: the claim is gone (cancelled,
    reaped), progress cannot be recorded, or the worker is shutting down."""
    return liveness.stop.is_set() or recorder.lost or recorder.unreachable or SHUTTING_DOWN.is_set()


T = TypeVar("T")


def _in_child(
    run_id: int, recorder: ProgressRecorder, workdir: Path, call: Callable[[], T]
) -> tuple[T | None, str | None]:
    """Run ``call`` (training or an analysis in the isolated child) and map how it ended:
    ``(result, None)``, or ``(None, outcome)`` once the run has been failed, requeued or left
    for the reaper. The run fails only for reasons of its own (its code, its data, its memory
    cap, or a non-transient fault of the platform, said on the run rather than looped)."""
    from h3lab.isolation import MemoryLimitExceeded, TrainingFailed, TrainingInterrupted

    try:
        return call(), None
    except MemoryLimitExceeded as exc:
        return None, _fail(recorder, workdir, error=str(exc), trace="")
    except TrainingFailed as exc:
        return None, _fail(recorder, workdir, error=exc.error, trace=exc.child_traceback)
    except TrainingInterrupted as exc:
        return None, _requeue(recorder, f"the worker was shutting down ({exc})")
    except Exception as exc:
        if is_transient(exc) or recorder.unreachable:
            log.warning("run %s interrupted by %r; left for the reaper", run_id, exc)
            return None, "interrupted"
        error = f"{type(exc).__name__}: {exc}"
        return None, _fail(recorder, workdir, error=error, trace=traceback.format_exc())


def _fail(recorder: ProgressRecorder, workdir: Path, *, error: str, trace: str) -> str:
    """The run failed for a reason of its own: record it with its log, drop its folder."""
    from django.conf import settings

    from experiments.actions.worker import do_fail_run
    from experiments.presenters import LOG_ARTIFACT

    recorder.flush(force=True)
    log_file = workdir / LOG_ARTIFACT
    files = [(log_file, LOG_ARTIFACT)] if log_file.is_file() else []
    try:
        failed = retry_transient(
            lambda: do_fail_run(
                recorder.run_id, recorder.token, error=error, traceback=trace, files=files
            ),
            budget_s=settings.H3LAB_TRANSIENT_RETRY_S,
            what=f"run {recorder.run_id}: record failure",
        )
    except TransientError:
        return "interrupted"  # the reaper requeues it; the next attempt fails the same way
    if failed:
        # SECURITY: plaintext checkpoints and log of a final run are not left on disk.
        shutil.rmtree(workdir, ignore_errors=True)
        return "failed"
    return "stopped"  # cancelled or reaped meanwhile; the reaper sweeps a cancelled folder


def _requeue(recorder: ProgressRecorder, reason: str) -> str:
    """Stopped at a checkpoint for a reason not the run's own: back to the queue, no attempt
    used; its folder stays for the resume."""
    from django.conf import settings

    from experiments.actions.worker import do_preempt_run

    recorder.flush(force=True)
    try:
        requeued = retry_transient(
            lambda: do_preempt_run(recorder.run_id, recorder.token, reason=reason),
            budget_s=settings.H3LAB_TRANSIENT_RETRY_S,
            what=f"run {recorder.run_id}: requeue",
        )
    except TransientError:
        return "interrupted"
    return "requeued" if requeued else "stopped"


def _stopped(recorder: ProgressRecorder, liveness: Liveness, workdir: Path) -> str:
    """Training returned "stopped" at a checkpoint: find out why and act on it."""
    from django.conf import settings

    from experiments.actions.worker import do_archive_workdir, is_cancelled

    recorder.flush(force=True)
    if recorder.unreachable:
        log.warning("run %s: database unreachable; left for the reaper", recorder.run_id)
        return "interrupted"
    if recorder.lost or liveness.stop.is_set():
        # Cancelled or reaped: the row already says so. A cancelled run never resumes, so its
        # folder goes (its log kept, encrypted); a reaped one may be training again elsewhere
        # from this folder. If the database is away now, the reaper's sweep removes it later.
        with contextlib.suppress(TransientError):
            retry_transient(
                lambda: (
                    is_cancelled(recorder.run_id) and do_archive_workdir(recorder.run_id, workdir)
                ),
                budget_s=settings.H3LAB_TRANSIENT_RETRY_S,
                what=f"run {recorder.run_id}: archive",
            )
        return "stopped"
    # Neither cancelled nor lost: a warm shutdown (or a SIGTERM that reached only the child).
    return _requeue(recorder, "the worker was shutting down (warm shutdown or redeploy)")


def _complete(
    recorder: ProgressRecorder,
    workdir: Path,
    result: TrainResult,
    *,
    extra: dict[str, Any] | None = None,
    fields: dict[str, Any] | None = None,
) -> str:
    """Record a finished run with its output files and drop its folder. An analysis gives its
    result (``extra``, instead of training's metrics) and row ``fields``."""
    from django.conf import settings

    from experiments.actions.worker import do_complete_run

    if extra is None:
        recorded = {
            "status": result.status,
            "step": result.step,
            "train_loss": result.train_loss,
            "test_loss": result.test_loss,
            "test_accuracy": result.test_accuracy,
            "best_test_accuracy": result.best_test_accuracy,
            "elapsed_s": result.elapsed_s,
            "device": result.device,
        }
    else:  # an analysis: its own summary, not training's (NaN) metrics
        recorded = {
            "status": result.status,
            "step": result.step,
            "elapsed_s": result.elapsed_s,
            "device": result.device,
            **extra,
        }
    try:
        done = retry_transient(
            lambda: do_complete_run(
                recorder.run_id,
                recorder.token,
                result=recorded,
                files=_output_files(workdir),
                fields=fields or {"step": result.step, "test_accuracy": result.test_accuracy},
            ),
            budget_s=settings.H3LAB_TRANSIENT_RETRY_S,
            what=f"run {recorder.run_id}: complete",
        )
    except TransientError:
        # The final checkpoint stays: the reaper requeues the run and the next attempt, finding
        # it finished, only stores the results.
        return "interrupted"
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
    ignore_result=True,  # the Run row is the result; no result-backend write to fail
    soft_time_limit=int(os.environ.get("H3LAB_RUN_SOFT_LIMIT_S", 2 * DAY)),
    time_limit=int(os.environ.get("H3LAB_RUN_HARD_LIMIT_S", 2 * DAY + 600)),
    max_retries=0,
)
def run_training(self: Task[[int], str], run_id: int) -> str:
    """Train one run. Failures are recorded on the row, not retried: a deterministic error
    would fail again, and lost workers are handled by :func:`reap_stale_runs`."""
    if SHUTTING_DOWN.is_set():
        # A worker in warm shutdown may still receive a message (the run it just requeued,
        # among others): hand it back to the broker untouched rather than claim and stop.
        raise Reject("worker shutting down", requeue=True)
    try:
        return execute_run(run_id, task_id=self.request.id or "")
    finally:
        from django.db import close_old_connections

        close_old_connections()


@app.task(
    name="h3lab.jobs.reap_stale_runs",
    acks_late=True,
    time_limit=120,
    max_retries=0,
    ignore_result=True,  # the runs it changed say so themselves; no result-backend write
)
def reap_stale_runs() -> list[tuple[int, str]]:
    """Periodic (beat, on the ``control`` queue, messages expiring after one interval):
    requeue or fail runs whose worker stopped sending heartbeats, re-send queued runs whose
    message was lost, and remove the working folders of runs it failed (log kept)."""
    from django.conf import settings

    from experiments.actions.worker import do_reap_stale_runs, do_sweep_final_workdirs

    reaped = do_reap_stale_runs()
    # The folders of runs failed above, and any other final run's left behind.
    swept = do_sweep_final_workdirs(
        Path(settings.RUNS_DIR), older_than_s=settings.H3LAB_HEARTBEAT_TIMEOUT_S
    )
    if swept:
        log.info("removed the working folders of final runs %s (logs kept)", swept)
    return [(r.run_id, r.outcome) for r in reaped]


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
