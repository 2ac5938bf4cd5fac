"""Training in a child process under a memory cap, so that one run cannot take its worker down.

:func:`train_isolated` runs :func:`h3lab.train.train` (unchanged) in a fresh *spawned* process
(torch is not fork-safe) whose address space is capped with ``RLIMIT_AS`` at ``memory_limit_mb``
MiB above what the interpreter and torch already map there. The child reports back over a pipe
and the caller's :class:`~h3lab.train.Callbacks` run in the calling process, so whatever they do
(database writes, heartbeats) stays there; the child needs no Django.

    parent                                   child (spawned)
    callbacks.on_progress / on_eval  ◀─────  ("progress" | "eval", …) each report
    callbacks.should_stop() → stop.set() ──▶ train polls ``stop`` before every step, checkpoints
                                              and returns "stopped"; so it does if the parent dies
    TrainResult / MemoryLimitExceeded ◀────  ("result" | "memory" | "error", …), then exits

A child that ignores ``stop`` for ``stop_grace_s`` is killed, and so is the child of a parent
that leaves by an exception. A child killed by SIGKILL (what the kernel's OOM killer sends)
counts as having run out of memory.

SIGTERM or SIGINT reaching the child (a redeploy, ``docker stop``, Ctrl-C: the whole process
group is signalled) is a request to stop, not a death: it checkpoints and returns "stopped",
as for ``stop``. A child killed by one of them before it could do so raises
:class:`TrainingInterrupted`, which is not the run's fault either.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from h3lab.config import RunConfig
from h3lab.train import Callbacks, TrainResult

TrainFn = Callable[..., TrainResult]

# torch's CPU allocator reports failure as a RuntimeError, not a MemoryError.
_ALLOCATION_FAILURES = ("can't allocate memory", "out of memory", "std::bad_alloc")


class MemoryLimitExceeded(MemoryError):
    """The training outgrew its memory cap (or was killed, as by the OOM killer)."""

    def __init__(self, limit_mb: int, detail: str = "") -> None:
        self.limit_mb = limit_mb
        message = (
            f"run exceeded its memory limit of {limit_mb:,} MiB"
            if limit_mb
            else "run ran out of memory"
        )
        super().__init__(f"{message} ({detail})" if detail else message)


class TrainingFailed(Exception):
    """The training raised in the child. ``error`` is ``"Type: message"``; ``child_traceback``
    the child's formatted traceback."""

    def __init__(self, error: str, child_traceback: str) -> None:
        self.error, self.child_traceback = error, child_traceback
        super().__init__(error)


class TrainingInterrupted(Exception):
    """The training process was ended by SIGTERM/SIGINT before it could checkpoint: a
    shutdown, not a failure of the run; it resumes from its last checkpoint."""


@dataclass(frozen=True)
class _Job:
    train: TrainFn
    config: dict[str, Any]
    out_dir: Path
    resume: bool
    memory_limit_mb: int
    parent_pid: int


def train_isolated(
    cfg: RunConfig,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    *,
    resume: bool = True,
    memory_limit_mb: int = 0,
    train: TrainFn | None = None,
    stop_grace_s: float = 60.0,
    poll_s: float = 0.1,
) -> TrainResult:
    """``train(cfg, out_dir, callbacks, resume=resume)`` in a spawned child process capped at
    ``memory_limit_mb`` MiB of address space beyond its runtime (0: no cap). ``train`` must be
    importable by name in the child (default :func:`h3lab.train.train`).

    Raises :class:`MemoryLimitExceeded` when the child ran out of memory or died by a signal
    (under a cap), :class:`TrainingFailed` when training raised anything else. ``on_checkpoint``
    and ``on_log`` callbacks are not relayed.
    """
    if train is None:
        from h3lab.train import train as default_train

        train = default_train
    cb = callbacks or Callbacks()
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    stop = ctx.Event()
    job = _Job(train, cfg.to_dict(), Path(out_dir), resume, memory_limit_mb, os.getpid())
    # Not a daemon: a data-parallel run's child spawns its ranks (h3lab.distributed), which
    # a daemonic process may not; the ``finally`` below kills it on every way out instead.
    child = ctx.Process(target=_child, args=(sender, stop, job), name="h3lab-train")
    child.start()
    sender.close()  # the child holds the only write end: EOF once it exits
    stop_deadline = math.inf
    try:
        while True:
            if cb.should_stop is not None and not stop.is_set() and cb.should_stop():
                stop.set()
                stop_deadline = time.monotonic() + stop_grace_s
            if time.monotonic() > stop_deadline:
                child.kill()
                return _stopped(cfg, out_dir)
            if not receiver.poll(poll_s):
                continue
            try:
                kind, payload = receiver.recv()
            except EOFError:  # exited without a word: killed, or crashed in native code
                child.join()
                code = child.exitcode or 0
                if code == -signal.SIGKILL:  # what the kernel's OOM killer sends
                    raise MemoryLimitExceeded(memory_limit_mb, "killed by SIGKILL") from None
                if code in (-signal.SIGTERM, -signal.SIGINT):
                    raise TrainingInterrupted(f"training process ended by signal {-code}") from None
                raise TrainingFailed(f"training process died (exit code {code})", "") from None
            if kind == "progress" and cb.on_progress is not None:
                cb.on_progress(payload)
            elif kind == "eval" and cb.on_eval is not None:
                cb.on_eval(payload)
            elif kind == "result":
                result: TrainResult = payload
                return result
            elif kind == "memory":
                raise MemoryLimitExceeded(memory_limit_mb, payload)
            elif kind == "error":
                raise TrainingFailed(*payload)
    finally:
        receiver.close()
        child.join(timeout=5)
        if child.is_alive():
            child.kill()
            child.join()


def analyse_isolated(
    spec: dict[str, Any],
    source: Path,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    *,
    memory_limit_mb: int = 0,
    stop_grace_s: float = 5.0,
) -> TrainResult:
    """An analysis (:func:`h3lab.analysis.analysis_job`) of the checkpoint in ``source`` in the
    same capped child as training, with the same errors. An analysis keeps no checkpoint to
    resume from, so a stop request kills it after ``stop_grace_s`` rather than waiting."""
    import functools

    from h3lab.analysis import analysis_job
    from h3lab.checkpoint import read_config

    cfg = read_config(Path(source))
    return train_isolated(
        cfg,
        out_dir,
        callbacks,
        resume=False,
        memory_limit_mb=memory_limit_mb,
        train=functools.partial(analysis_job, spec, str(source)),
        stop_grace_s=stop_grace_s,
    )


def _stopped(cfg: RunConfig, out_dir: Path) -> TrainResult:
    """The result of a child killed after ignoring ``stop``: stopped where its last checkpoint
    is."""
    nan = math.nan
    return TrainResult(
        status="stopped",
        step=-1,
        train_loss=nan,
        test_loss=nan,
        test_accuracy=nan,
        best_test_accuracy=nan,
        elapsed_s=nan,
        device=cfg.train.device,
        checkpoint_dir=Path(out_dir) / "checkpoint",
        history=[],
    )


def cap_address_space(limit_mb: int) -> None:
    """Cap this process's address space at ``limit_mb`` MiB beyond what it maps now, so the cap
    measures what the training allocates, not the hundreds of MiB of libraries already loaded.
    Never raises the hard limit."""
    import resource

    limit = _mapped_bytes() + limit_mb * 2**20
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _mapped_bytes() -> int:
    """This process's virtual memory size (Linux ``VmSize``); 0 where /proc is missing."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def _child(conn: Connection, stop: Any, job: _Job) -> None:
    """The child's side of :func:`train_isolated`."""
    signalled: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        signalled.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        import torch  # noqa: F401  (loaded before the cap, so the cap excludes the runtime)

        cfg = RunConfig.from_dict(job.config)
        if job.memory_limit_mb:
            cap_address_space(job.memory_limit_mb)

        def should_stop() -> bool:
            if signalled:  # SIGTERM/SIGINT: checkpoint and stop, resumable
                return True
            return stop.is_set() or os.getppid() != job.parent_pid  # orphaned: stop, resumable

        callbacks = Callbacks(
            on_progress=lambda p: conn.send(("progress", p)),
            on_eval=lambda e: conn.send(("eval", e)),
            should_stop=should_stop,
        )
        result = job.train(cfg, job.out_dir, callbacks, resume=job.resume)
        conn.send(("result", result))
    except MemoryError as exc:
        _send_quietly(conn, ("memory", f"{type(exc).__name__}: {exc}"[:500]))
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        if any(marker in str(exc) for marker in _ALLOCATION_FAILURES):
            _send_quietly(conn, ("memory", error[:500]))
        else:
            _send_quietly(conn, ("error", (error, traceback.format_exc())))
    finally:
        conn.close()


def _send_quietly(conn: Connection, message: tuple[str, Any]) -> None:
    """Report a failure; if even that fails (no memory left, parent gone), exit silently and
    let the parent read the exit code."""
    with contextlib.suppress(BaseException):
        conn.send(message)
