"""Training and evaluation as pure functions with callbacks (no Django; Celery wraps these).

:func:`train` runs one :class:`~h3lab.config.RunConfig` to completion, early stop or
cooperative cancellation, and leaves in ``out_dir``::

    checkpoint/     latest checkpoint (see h3lab.checkpoint), resumable and loadable
    selected/       the weights chosen on the validation split (best validation accuracy,
                    then lowest validation loss), as a pretrained export — when the task has
                    a validation split
    metrics.json    {"final": {...}, "history": [...]}  (see h3lab.curves)
    curves.png      loss and test accuracy against step
    train.log       the log lines also sent to ``Callbacks.on_log``

Model selection and early stopping look at the validation split only (``task.num_val``
examples from their own stream); the test split is evaluated at the same steps and recorded,
and the run reports the test accuracy *of the selected step*. Configs stored before the
validation split existed have ``num_val = 0`` and select on test, as they did.

Determinism: the batch at step ``s`` is a pure function of ``(seed, s)`` — epoch ``e`` is a
permutation seeded by ``(seed, e)`` — and the global RNG (dropout) is saved in checkpoints, so
on CPU a resumed run reproduces an uninterrupted one bit for bit.

Data parallel (``TrainConfig.processes`` > 1, see :mod:`h3lab.distributed`): every rank
draws the same global batch for step ``s`` and trains on its contiguous slice; the loss is
normalised by the global count of target tokens, so the gradient equals the single-process
one. Rank 0 alone evaluates, checkpoints (the unwrapped model), writes the files above and
calls the callbacks; a stop request on any rank reaches all of them each step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from h3lab.checkpoint import (
    find_checkpoint,
    load_checkpoint,
    read_config,
    restore_training,
    rng_states,
    save_checkpoint,
    save_pretrained,
    set_rng_states,
)
from h3lab.config import RunConfig, TrainConfig
from h3lab.curves import json_safe, plot_curves, write_metrics
from h3lab.data.datasets import TokenDataset, make_splits

if TYPE_CHECKING:
    from h3lab.distributed import Group
    from h3lab.nn.lm import LanguageModel

PROGRESS_INTERVAL_S = 0.25  # on_progress at most ~4 times a second
IGNORE_INDEX = -100

Status = Literal["completed", "early_stopped", "stopped"]


@dataclass(frozen=True)
class Progress:
    """A training-progress report. ``accuracy`` is the final-token accuracy of the current
    training batch; ``eta_s`` is None until a step has been timed."""

    step: int
    total_steps: int
    loss: float
    accuracy: float | None
    tokens_per_s: float
    eta_s: float | None
    lr: float
    elapsed_s: float


@dataclass(frozen=True)
class EvalResult:
    """Mean loss over every target token, and accuracy on the final token. In what
    ``on_eval`` receives, the test split's, with the validation split's accuracy beside it
    (``val_accuracy``; None without a validation split)."""

    step: int
    loss: float
    accuracy: float
    val_accuracy: float | None = None


@dataclass
class Callbacks:
    """Hooks into :func:`train`, all optional, all called on the training thread.

    ``on_progress``: rate-limited (≤ ~4/s) plus once on the last step. ``on_eval``: after each
    evaluation. ``on_checkpoint(path, step)``: after a checkpoint is complete on disk.
    ``on_log``: each log line. ``should_stop``: polled before every step; True stops the run
    after saving a checkpoint (status ``"stopped"``, resumable).
    """

    on_progress: Callable[[Progress], None] | None = None
    on_eval: Callable[[EvalResult], None] | None = None
    on_checkpoint: Callable[[Path, int], None] | None = None
    on_log: Callable[[str], None] | None = None
    should_stop: Callable[[], bool] | None = None


@dataclass(frozen=True)
class TrainResult:
    """How a run ended. Test metrics are from the last evaluation (NaN if there was none)."""

    status: Status
    step: int
    train_loss: float
    test_loss: float
    test_accuracy: float
    best_test_accuracy: float
    elapsed_s: float
    device: str
    checkpoint_dir: Path
    history: list[dict[str, Any]]
    # Selection on validation: the step with the best validation accuracy (ties: lower
    # validation loss, then earlier), its validation accuracy and its test accuracy. Without
    # a validation split (legacy configs) the selection falls back to test.
    selected_step: int = 0
    selected_val_accuracy: float = math.nan
    selected_test_accuracy: float = math.nan
    selected_on: str = "val"


# ----------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """``"auto"`` means CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; full precision elsewhere (CPU runs must stay deterministic)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """Linear warmup over ``warmup_steps`` then cosine decay to ``min_lr_ratio``; ``step`` is
    0-based (the step about to be taken)."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def build_optimizer(model: LanguageModel, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with three groups: decayed weights (``lr``); biases, norms and embeddings
    (``lr``, no decay); SSM parameters (``ssm_lr``, no decay), as the H3 paper trains."""
    ssm = model.ssm_parameter_names()
    no_decay = model.no_decay_parameter_names()
    groups: dict[str, list[torch.nn.Parameter]] = {"decay": [], "no_decay": [], "ssm": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = "ssm" if name in ssm else "no_decay" if name in no_decay else "decay"
        groups[kind].append(p)
    settings = {
        "decay": (cfg.lr, cfg.weight_decay),
        "no_decay": (cfg.lr, 0.0),
        "ssm": (cfg.ssm_lr, 0.0),
    }
    param_groups = [
        {
            "params": ps,
            "lr": settings[k][0],
            "initial_lr": settings[k][0],
            "weight_decay": settings[k][1],
            "name": k,
        }
        for k, ps in groups.items()
        if ps
    ]
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.999))


class BatchOrder:
    """Batch indices as a pure function of ``(seed, step)``: consecutive epochs, each a
    permutation of the dataset seeded by ``(seed, epoch)``, cut into batches back to back."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._cached: tuple[int, torch.Tensor] | None = None

    def _perm(self, epoch: int) -> torch.Tensor:
        if self._cached is None or self._cached[0] != epoch:
            g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % (2**63))
            self._cached = (epoch, torch.randperm(self.n, generator=g))
        return self._cached[1]

    def indices(self, step: int) -> torch.Tensor:
        """Indices of the batch for 0-based ``step``: (B,) long."""
        out: list[torch.Tensor] = []
        pos, need = step * self.batch_size, self.batch_size
        while need:
            epoch, offset = divmod(pos, self.n)
            chunk = self._perm(epoch)[offset : offset + need]
            out.append(chunk)
            pos, need = pos + len(chunk), need - len(chunk)
        return torch.cat(out)


def _batches(
    dataset: TokenDataset, batch_size: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(dataset), batch_size):
        x = dataset.inputs[i : i + batch_size].to(device)  # (B, L)
        y = dataset.targets[i : i + batch_size].to(device)  # (B, L)
        yield x, y


def _loss(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    # logits (B, L, V), targets (B, L); in float32 whatever autocast produced.
    return F.cross_entropy(
        logits.float().flatten(0, 1),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: TokenDataset,
    *,
    batch_size: int,
    device: str | torch.device,
    step: int = 0,
    amp: bool = True,
) -> EvalResult:
    """Mean loss over every target token and final-token accuracy over ``dataset``.

    The model is put in eval mode for the pass and its previous mode restored.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    loss_sum, tokens, correct = 0.0, 0, 0
    try:
        for x, y in _batches(dataset, batch_size, device):
            with autocast(device, amp):
                logits = model(x)  # (B, L, V)
            loss_sum += _loss(logits, y, "sum").item()
            tokens += int((y != IGNORE_INDEX).sum())
            correct += int((logits[:, -1].argmax(-1) == y[:, -1]).sum())
    finally:
        model.train(was_training)
    return EvalResult(step=step, loss=loss_sum / max(1, tokens), accuracy=correct / len(dataset))


@torch.no_grad()
def position_accuracy(
    model: torch.nn.Module, dataset: TokenDataset, *, batch_size: int, device: str | torch.device
) -> torch.Tensor:
    """Next-token accuracy at every position: (L,) float in [0, 1] (for probes)."""
    device = torch.device(device)
    was_training = model.training
    model.eval()
    correct = torch.zeros(dataset.seq_len, dtype=torch.float64)
    try:
        for x, y in _batches(dataset, batch_size, device):
            with autocast(device):
                logits = model(x)  # (B, L, V)
            correct += (logits.argmax(-1) == y).sum(0).double().cpu()  # (L,)
    finally:
        model.train(was_training)
    return (correct / len(dataset)).float()


class _RunLog:
    """Log lines to ``train.log`` and ``on_log``."""

    def __init__(
        self,
        path: Path,
        on_log: Callable[[str], None] | None,
        *,
        append: bool,
        quiet: bool = False,
    ) -> None:
        self.path, self.on_log, self.quiet = path, on_log, quiet
        if not append and not quiet:
            path.write_text("", encoding="utf-8")

    def __call__(self, message: str) -> None:
        if self.quiet:  # ranks other than 0 of a data-parallel run
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")
        if self.on_log:
            self.on_log(line)


@dataclass
class _Loop:
    """Bookkeeping saved in ``state.json`` so a resumed run continues exactly."""

    step: int = 0
    status: str = "running"
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # training loss accumulated since the last train row
    loss_count: int = 0
    good_evals: int = 0  # consecutive evaluations at or above early_stop_acc
    elapsed_s: float = 0.0  # over all sessions
    selected: dict[str, Any] = field(default_factory=dict)  # the eval row chosen so far

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = json_safe(dict(self.__dict__))
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> _Loop:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in state.items() if k in names})

    def last(self, kind: str, key: str) -> float:
        rows = [r for r in self.history if r["kind"] == kind and r.get(key) is not None]
        return float(rows[-1][key]) if rows else math.nan

    def best_accuracy(self) -> float:
        accs = [r["test_accuracy"] for r in self.history if r["kind"] == "eval"]
        return max(accs) if accs else math.nan


# ----------------------------------------------------------------------------- train


def train(
    cfg: RunConfig, out_dir: Path, callbacks: Callbacks | None = None, *, resume: bool = True
) -> TrainResult:
    """Train ``cfg`` in ``out_dir`` (see the module docstring for the files it writes).

    ``resume=True`` continues from ``out_dir/checkpoint`` when present (a finished run is
    returned as is); ``resume=False`` starts over. Raises ValueError if the checkpoint there
    belongs to a different model or task.

    With ``cfg.train.processes`` > 1 this process launches that many ranks
    (:func:`h3lab.distributed.launch`) and relays rank 0's callbacks; the checkpoint it
    resumes from may have been written by any number of processes.
    """
    if cfg.train.processes > 1:
        from h3lab.distributed import launch

        return launch(cfg, Path(out_dir), callbacks or Callbacks(), resume=resume)
    return train_rank(cfg, out_dir, callbacks, resume=resume)


def train_rank(
    cfg: RunConfig,
    out_dir: Path,
    callbacks: Callbacks | None = None,
    *,
    resume: bool = True,
    group: Group | None = None,
) -> TrainResult:
    """:func:`train` in this process: alone (``group=None``) or as one rank of ``group``."""
    cb = callbacks or Callbacks()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out_dir / "checkpoint"
    existing = find_checkpoint(ckpt_dir) if resume else None
    quiet = group is not None and group.rank != 0
    log = _RunLog(out_dir / "train.log", cb.on_log, append=existing is not None, quiet=quiet)
    device = group.device if group is not None else resolve_device(cfg.train.device)
    splits = make_splits(cfg.task)
    # The global RNG drives dropout; fork it so a worker process's state is left untouched.
    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        return _train(
            cfg,
            out_dir,
            ckpt_dir,
            existing,
            cb,
            log,
            device,
            splits.train,
            splits.val,
            splits.test,
            group,
        )


def _train(
    cfg: RunConfig,
    out_dir: Path,
    ckpt_dir: Path,
    existing: Path | None,
    cb: Callbacks,
    log: _RunLog,
    device: torch.device,
    train_ds: TokenDataset,
    val_ds: TokenDataset,
    test_ds: TokenDataset,
    group: Group | None = None,
) -> TrainResult:
    from h3lab.nn.lm import LanguageModel

    rank0 = group is None or group.rank == 0
    world = 1 if group is None else group.world_size

    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = LanguageModel(cfg.model, generator=torch.Generator().manual_seed(tc.seed)).to(device)
    optimizer = build_optimizer(model, tc)
    loop = _Loop()
    if existing is not None:
        saved = read_config(existing)
        if saved.model != cfg.model or saved.task != cfg.task:
            raise ValueError(
                f"{existing} holds a checkpoint of a different model or task; "
                "use another out_dir or resume=False"
            )
        state, rng = restore_training(existing, model=model, optimizer=optimizer)
        loop = _Loop.from_state(state)
        set_rng_states(rng, device)
        ranks = f" with {world} processes" if world > 1 else ""
        log(f"resumed from {existing} at step {loop.step}{ranks}")
    else:
        n_params = sum(p.numel() for p in model.parameters())
        log(
            f"start {cfg.preset} {'/'.join(cfg.model.mixers)} d_model={cfg.model.d_model} "
            f"({n_params:,} parameters) on {cfg.task.name} [{len(train_ds)} train / "
            f"{len(val_ds)} val / {len(test_ds)} test, L={train_ds.seq_len}] device={device}"
            + (f" × {world} processes" if world > 1 else "")
        )
    # Forward and backward through the DDP wrapper (gradients all-reduced); evaluation and
    # checkpoints use the unwrapped model, so checkpoints do not depend on the process count.
    net = model if group is None else group.wrap(model)

    finished = loop.status == "early_stopped" or (
        loop.status == "completed" and loop.step >= tc.steps
    )
    order = BatchOrder(len(train_ds), tc.batch_size, tc.seed)
    eval_bs = tc.batch_size * 4
    saved_step = loop.step if existing is not None else -1
    status: Status = "early_stopped" if loop.status == "early_stopped" else "completed"
    t0 = time.monotonic()
    elapsed0 = loop.elapsed_s
    last_progress = -math.inf
    steps_this_session = 0

    def checkpoint() -> None:
        nonlocal saved_step
        if not rank0:
            return
        loop.elapsed_s = elapsed0 + time.monotonic() - t0
        save_checkpoint(
            ckpt_dir,
            model=model,
            cfg=cfg,
            optimizer=optimizer,
            state=loop.to_state(),
            rng=rng_states(device),
        )
        saved_step = loop.step
        log(f"checkpoint at step {loop.step}")
        if cb.on_checkpoint:
            cb.on_checkpoint(ckpt_dir, loop.step)

    selected_on = "val" if len(val_ds) else "test"

    def run_eval() -> EvalResult:
        """Evaluate test (recorded) and validation (decides); returns the deciding result."""
        result = evaluate(
            model, test_ds, batch_size=eval_bs, device=device, step=loop.step, amp=tc.amp
        )
        row: dict[str, Any] = {
            "kind": "eval",
            "step": loop.step,
            "test_loss": result.loss,
            "test_accuracy": result.accuracy,
        }
        decides = result
        if len(val_ds):
            decides = evaluate(
                model, val_ds, batch_size=eval_bs, device=device, step=loop.step, amp=tc.amp
            )
            row.update(val_loss=decides.loss, val_accuracy=decides.accuracy)
        loop.history.append(row)
        log(
            f"eval step {loop.step}: test loss {result.loss:.4f}, accuracy {result.accuracy:.4f}"
            + (f"; val accuracy {decides.accuracy:.4f}" if len(val_ds) else "")
        )
        best = loop.selected
        key = (decides.accuracy, -decides.loss)
        if not best or key > (best["accuracy"], -best["loss"]):
            loop.selected = {
                "step": loop.step,
                "accuracy": decides.accuracy,
                "loss": decides.loss,
                "test_accuracy": result.accuracy,
            }
            if len(val_ds):
                save_pretrained(
                    out_dir / "selected",
                    model,
                    cfg.model,
                    task=cfg.task,
                    source={"selected_on": "val", "step": loop.step, "run": cfg.to_dict()},
                )
        if cb.on_eval:
            cb.on_eval(replace(result, val_accuracy=decides.accuracy) if len(val_ds) else result)
        return decides

    model.train()
    while not finished and loop.step < tc.steps:
        stop = bool(cb.should_stop and cb.should_stop())
        if group is not None:
            stop = group.any(stop)  # a stop request on any rank stops every rank here
        if stop:
            status = "stopped"
            log(f"stop requested at step {loop.step}")
            break
        idx = order.indices(loop.step)  # (B,)
        if group is not None:
            idx = group.shard(idx)  # (B / world,): this rank's contiguous slice
        x, y = (t.to(device) for t in train_ds.batch(idx))  # (b, L) each
        mult = lr_multiplier(loop.step, tc)
        for param_group in optimizer.param_groups:
            param_group["lr"] = param_group["initial_lr"] * mult
        with autocast(device, tc.amp):
            logits = net(x)  # (b, L, V)
        if group is None:
            loss = _loss(logits, y)
            global_loss: torch.Tensor | None = None
        else:
            # Sum over this rank's tokens / global token count; DDP averages gradients over
            # ranks, hence × world: the gradient is the global batch's mean-loss gradient.
            local_sum = _loss(logits, y, "sum")
            count = (y != IGNORE_INDEX).sum().to(local_sum.dtype)
            totals = group.sum(torch.stack([local_sum.detach(), count]))  # (2,)
            loss = local_sum * world / totals[1]
            global_loss = totals[0] / totals[1]
        optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        if tc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        optimizer.step()
        loop.step += 1
        steps_this_session += 1
        loss_value = (loss if global_loss is None else global_loss).item()
        loop.loss_sum += loss_value
        loop.loss_count += 1
        last_step = loop.step == tc.steps
        if loop.step % tc.log_every == 0 or last_step:
            loop.history.append(
                {
                    "kind": "train",
                    "step": loop.step,
                    "train_loss": loop.loss_sum / loop.loss_count,
                    "lr": tc.lr * mult,
                }
            )
            loop.loss_sum, loop.loss_count = 0.0, 0

        now = time.monotonic()
        if rank0 and cb.on_progress and (last_step or now - last_progress >= PROGRESS_INTERVAL_S):
            last_progress = now
            session_s = now - t0
            rate = steps_this_session / session_s if session_s > 0 else 0.0
            acc = (logits[:, -1].argmax(-1) == y[:, -1]).float().mean().item()
            cb.on_progress(
                Progress(
                    step=loop.step,
                    total_steps=tc.steps,
                    loss=loss_value,
                    accuracy=acc,
                    tokens_per_s=rate * x.numel() * world,
                    eta_s=(tc.steps - loop.step) / rate if rate > 0 else None,
                    lr=tc.lr * mult,
                    elapsed_s=elapsed0 + session_s,
                )
            )

        if loop.step % tc.eval_every == 0 or last_step:
            early = False
            if rank0:  # the other ranks wait for its decision
                ev = run_eval()
                if tc.early_stop_acc is not None:
                    good = ev.accuracy >= tc.early_stop_acc
                    loop.good_evals = loop.good_evals + 1 if good else 0
                    early = loop.good_evals >= tc.early_stop_patience
            if group is not None:
                early = group.broadcast(early)
            if early:
                status = "early_stopped"
                log(
                    f"early stop at step {loop.step}: {selected_on} accuracy ≥ "
                    f"{tc.early_stop_acc} for {loop.good_evals} evaluations"
                )
                break
        if loop.step % tc.checkpoint_every == 0 and not last_step:
            checkpoint()

    if (
        rank0
        and status == "completed"
        and not any(r["kind"] == "eval" and r["step"] == loop.step for r in loop.history)
    ):
        run_eval()  # e.g. resuming a run whose checkpoint came after its last evaluation
    prev_status, loop.status = loop.status, "running" if status == "stopped" else status
    if saved_step != loop.step or loop.status != prev_status:
        checkpoint()  # every run ends with a loadable checkpoint of its final state
    elapsed = elapsed0 + time.monotonic() - t0
    result = TrainResult(
        status=status,
        step=loop.step,
        train_loss=loop.last("train", "train_loss"),
        test_loss=loop.last("eval", "test_loss"),
        test_accuracy=loop.last("eval", "test_accuracy"),
        best_test_accuracy=loop.best_accuracy(),
        elapsed_s=elapsed,
        device=str(device),
        checkpoint_dir=ckpt_dir,
        history=list(loop.history),
        selected_step=int(loop.selected.get("step", 0)),
        selected_val_accuracy=float(loop.selected.get("accuracy", math.nan))
        if selected_on == "val"
        else math.nan,
        selected_test_accuracy=float(loop.selected.get("test_accuracy", math.nan)),
        selected_on=selected_on,
    )
    if not rank0:
        return result
    final = {k: v for k, v in result.__dict__.items() if k != "history"}
    final["checkpoint_dir"] = str(ckpt_dir)
    final["config"] = cfg.to_dict()
    write_metrics(out_dir / "metrics.json", loop.history, final)
    plot_curves(out_dir / "curves.png", loop.history, title=f"{cfg.preset} on {cfg.task.name}")
    log(
        f"{status} at step {loop.step}: test accuracy {result.test_accuracy:.4f} "
        f"(best {result.best_test_accuracy:.4f}), {elapsed:.1f}s"
    )
    return result


__all__ = [
    "Callbacks",
    "EvalResult",
    "Progress",
    "TrainResult",
    "evaluate",
    "load_checkpoint",
    "position_accuracy",
    "train",
    "train_rank",
]
