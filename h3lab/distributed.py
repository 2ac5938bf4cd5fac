"""Data-parallel training with torch.distributed: one process per rank on one machine.

:func:`launch` is what :func:`h3lab.train.train` does when ``TrainConfig.processes`` > 1: it
spawns that many ranks (``torch.multiprocessing``, spawn) that meet through an ``env://``
rendezvous on 127.0.0.1 and a free port, nccl with one GPU per rank on CUDA (rank r takes
``cuda:r``), gloo on CPU. Each rank runs :func:`h3lab.train.train_rank` with a
:class:`Group`; the model is wrapped in DistributedDataParallel.

    launching process (a worker, or h3lab.isolation's child)     ranks 0 … N-1 (spawned)
    callbacks.on_progress / on_eval / on_log / on_checkpoint ◀── rank 0's reports (a queue)
    callbacks.should_stop() → stop.set()                      ──▶ every rank polls ``stop``
                                                                  each step and all-reduces
                                                                  the flag (MAX): all stop at
                                                                  the same step, rank 0 saves
    TrainResult / the rank's exception                        ◀── ("result" | "error", …)

A rank that dies, or raises, ends the run: the others are killed (they would wait in a
collective). A rank killed by SIGKILL (the OOM killer) raises :class:`MemoryError` here, as
a memory cap inherited from :mod:`h3lab.isolation` caps each rank on its own. SIGTERM/SIGINT
reaching a rank, or its launcher going away, is a request to stop: the run checkpoints and
returns ``"stopped"``.

Equivalence: the global batch of step ``s`` is the single-process batch (``BatchOrder`` over
the global batch size), each rank takes a contiguous ``batch_size / N`` slice, and the loss
is normalised by the global token count, so gradients — and on CPU the loss trajectory, up
to float32 reduction order — equal single-process training. Checkpoints hold the unwrapped
model and the (replicated) optimizer state, so a run resumes with any number of processes.
Dropout masks are drawn per rank, so with dropout > 0 runs agree in distribution only.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from h3lab.config import RunConfig
from h3lab.train import Callbacks, TrainResult, resolve_device, train_rank

RENDEZVOUS_ADDR = "127.0.0.1"
_DEATH_GRACE_S = 1.0  # how long a rank's error waits for news of a dead rank


@dataclass(frozen=True)
class Group:
    """This rank's place in an initialised process group, and the few collectives training
    needs. ``device`` is the rank's device (``cuda:rank`` under nccl)."""

    rank: int
    world_size: int
    device: torch.device

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch's indices: (B,) → (B / world,).
        The slices of ranks 0 … N-1, concatenated, are ``idx``."""
        b = len(idx) // self.world_size
        return idx[self.rank * b : (self.rank + 1) * b]

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``t`` over ranks (a new tensor)."""
        out = t.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank."""
        t = torch.tensor([int(flag)], device=self.device)
        dist.broadcast(t, src=0)
        return bool(t.item())

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (which also broadcasts rank 0's weights)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


def free_port() -> int:
    """A TCP port free on the rendezvous address now (the OS's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((RENDEZVOUS_ADDR, 0))
        port: int = s.getsockname()[1]
        return port


def rank_device(train_device: str, rank: int) -> torch.device:
    """Rank ``rank``'s device for ``TrainConfig.device`` (``auto``/``cuda`` → ``cuda:rank``)."""
    device = resolve_device(train_device)
    return torch.device("cuda", rank) if device.type == "cuda" else device


def launch(
    cfg: RunConfig,
    out_dir: Path,
    callbacks: Callbacks,
    *,
    resume: bool = True,
    poll_s: float = 0.05,
    join_timeout_s: float = 30.0,
) -> TrainResult:
    """Train ``cfg`` with ``cfg.train.processes`` ranks; rank 0's :class:`TrainResult`.

    Raises ValueError when CUDA has fewer devices than ranks, the rank's exception when a
    rank raised, MemoryError when a rank was killed by SIGKILL, RuntimeError when one died
    otherwise.
    """
    n = cfg.train.processes
    if resolve_device(cfg.train.device).type == "cuda" and torch.cuda.device_count() < n:
        raise ValueError(f"{n} processes need {n} GPUs; {torch.cuda.device_count()} visible")
    ctx = torch.multiprocessing.get_context("spawn")
    events: Any = ctx.Queue()
    stop = ctx.Event()
    port = free_port()
    job = _RankJob(cfg.to_dict(), Path(out_dir), resume, n, port, os.getpid())
    ranks = [
        ctx.Process(target=_rank_main, args=(r, job, events, stop), name=f"h3lab-rank{r}")
        for r in range(n)
    ]
    for p in ranks:
        p.start()
    try:
        while True:
            if callbacks.should_stop is not None and not stop.is_set() and callbacks.should_stop():
                stop.set()
            try:
                kind, payload = events.get(timeout=poll_s)
            except queue.Empty:
                if not all(p.exitcode == 0 for p in ranks):
                    _check_alive(ranks)
                    continue
                try:  # all exited cleanly: their last words are in the pipe, if any
                    kind, payload = events.get(timeout=1.0)
                except queue.Empty:
                    raise RuntimeError("the ranks exited without a result") from None
            if kind == "progress" and callbacks.on_progress is not None:
                callbacks.on_progress(payload)
            elif kind == "eval" and callbacks.on_eval is not None:
                callbacks.on_eval(payload)
            elif kind == "log" and callbacks.on_log is not None:
                callbacks.on_log(payload)
            elif kind == "checkpoint" and callbacks.on_checkpoint is not None:
                callbacks.on_checkpoint(*payload)
            elif kind == "error":
                rank, exc, tb = payload
                # A rank's error may follow another's death (a collective lost its peer):
                # the death is the cause, so it is reported first.
                grace = time.monotonic() + _DEATH_GRACE_S
                for p in ranks:
                    p.join(max(0.0, grace - time.monotonic()))
                _check_alive(ranks)
                if isinstance(exc, BaseException):
                    exc.add_note(f"in rank {rank} of {n}:\n{tb}")
                    raise exc
                raise RuntimeError(f"rank {rank} of {n}: {exc}\n{tb}")
            elif kind == "result":
                result: TrainResult = payload
                deadline = time.monotonic() + join_timeout_s
                for p in ranks:
                    p.join(max(0.0, deadline - time.monotonic()))
                return result
    finally:
        for p in ranks:
            if p.is_alive():
                p.kill()
            p.join()
        events.close()


def _check_alive(ranks: list[Any]) -> None:
    """Raise if a rank has died (a rank's error or result comes through the queue first)."""
    for r, p in enumerate(ranks):
        code = p.exitcode
        if code is None or code == 0:
            continue
        if code == -signal.SIGKILL:
            raise MemoryError(f"rank {r} of {len(ranks)} was killed by SIGKILL")
        raise RuntimeError(f"rank {r} of {len(ranks)} died (exit code {code})")


@dataclass(frozen=True)
class _RankJob:
    config: dict[str, Any]
    out_dir: Path
    resume: bool
    world_size: int
    port: int
    launcher_pid: int


def _rank_main(rank: int, job: _RankJob, events: Any, stop: Any) -> None:
    """One rank: join the group, train, report (rank 0) and leave the group."""
    signalled: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        signalled.append(signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    try:
        cfg = RunConfig.from_dict(job.config)
        os.environ.update(
            MASTER_ADDR=RENDEZVOUS_ADDR,
            MASTER_PORT=str(job.port),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE=str(job.world_size),
        )
        device = rank_device(cfg.train.device, rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:  # the ranks share the CPU: don't oversubscribe it
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.world_size))
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method="env://",
            rank=rank,
            world_size=job.world_size,
        )
        group = Group(rank, job.world_size, device)

        def should_stop() -> bool:
            return bool(signalled) or stop.is_set() or os.getppid() != job.launcher_pid

        cb = Callbacks(should_stop=should_stop)
        if rank == 0:
            cb.on_progress = lambda p: events.put(("progress", p))
            cb.on_eval = lambda e: events.put(("eval", e))
            cb.on_log = lambda line: events.put(("log", line))
            cb.on_checkpoint = lambda path, step: events.put(("checkpoint", (path, step)))
        result = train_rank(cfg, job.out_dir, cb, resume=job.resume, group=group)
        if rank == 0:
            events.put(("result", result))
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            events.put(("error", (rank, _picklable(exc), traceback.format_exc())))
    finally:
        if dist.is_initialized():
            with contextlib.suppress(Exception):
                dist.destroy_process_group()
        events.close()
        events.join_thread()  # the report is in the pipe before this process exits


def _picklable(exc: BaseException) -> BaseException | str:
    import pickle

    try:
        # SECURITY: unpickles only the bytes this line just produced, to see whether the
        # launcher will be able to; the queue between our own processes pickles anyway.
        pickle.loads(pickle.dumps(exc))  # noqa: S301
    except Exception:
        return f"{type(exc).__name__}: {exc}"
    return exc


__all__ = ["Group", "free_port", "launch", "rank_device"]
