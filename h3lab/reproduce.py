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
a run that hits its share stops cooperatively and reports its last evaluation.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
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
TRAIN = TrainConfig(
    steps=6000,
    batch_size=128,
    lr=2e-3,
    ssm_lr=2e-3,
    weight_decay=0.1,
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
# either way.
MODEL_KW: dict[str, dict[str, int]] = {"h3": {"head_dim": 8}}


def run_config(task: str, model: str, *, device: str = "auto", seed: int = 0) -> RunConfig:
    """The run config used for one cell of the table."""
    lr = LR_BY_MODEL.get(model, TRAIN.lr)
    train = dataclasses.replace(TRAIN, lr=lr, ssm_lr=lr, device=device, seed=seed)
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
            ours = None if r is None else 100 * r["test_accuracy"]
            cells.append(f"{_fmt(ours)} / {_fmt(PAPER.get((t, m)))}")
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| task | model | status | steps | seconds | device |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {LABELS[r['model']]} | {r['status']} | {r['step']} | "
            f"{r['elapsed_s']:.0f} | {r['device']} |"
        )
    lines += [
        "",
        f"Total {meta['elapsed_s'] / 60:.1f} minutes (budget {meta['budget_minutes']} minutes). "
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
        ours = [100 * cell[(t, m)]["test_accuracy"] if (t, m) in cell else 0.0 for m in models]
        paper = [PAPER.get((t, m), float("nan")) for m in models]
        ax.bar([x - 0.2 for x in xs], ours, 0.4, label="ours")
        ax.bar([x + 0.2 for x in xs], paper, 0.4, label="paper", alpha=0.6)
        ax.set_xticks(xs, [LABELS[m] for m in models])
        ax.set(title=t.replace("_", " "), ylabel="test accuracy (%)", ylim=(0, 105))
        ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110)


def reproduce_synthetic(
    out: Path,
    *,
    tasks: list[str] | None = None,
    models: list[str] | None = None,
    budget_minutes: float = 60.0,
    device: str = "auto",
    work_dir: Path = Path("runs/reproduce"),
    seed: int = 0,
    on_run: Callable[[str, str, RunConfig], Any] | None = None,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train every (task, model) cell and write the report; returns the result rows.

    ``on_run(task, model, cfg)`` may return :class:`h3lab.train.Callbacks` for that run
    (its ``should_stop`` is combined with the time budget)."""
    from h3lab.train import Callbacks, train

    tasks = tasks or list(TASKS)
    models = models or list(MODELS)
    cells = [(t, m) for t in tasks for m in models]
    start = time.monotonic()
    deadline = start + budget_minutes * 60
    rows: list[dict[str, Any]] = []
    for i, (task, model) in enumerate(cells):
        cfg = run_config(task, model, device=device, seed=seed)
        share = (deadline - time.monotonic()) / (len(cells) - i)
        run_deadline = time.monotonic() + max(share, 0.0)
        cb = (on_run(task, model, cfg) if on_run else None) or Callbacks()
        user_stop = cb.should_stop

        def should_stop(d: float = run_deadline, u: Callable[[], bool] | None = user_stop) -> bool:
            return time.monotonic() > d or bool(u and u())

        cb = dataclasses.replace(cb, should_stop=should_stop)
        log(f"[{i + 1}/{len(cells)}] {model} on {task}: up to {share / 60:.1f} min")
        result = train(cfg, work_dir / f"{task}-{model}", cb, resume=False)
        rows.append(
            {
                "task": task,
                "model": model,
                "status": result.status,
                "step": result.step,
                "test_accuracy": result.test_accuracy,
                "best_test_accuracy": result.best_test_accuracy,
                "test_loss": result.test_loss,
                "elapsed_s": result.elapsed_s,
                "device": result.device,
                "paper": PAPER.get((task, model)),
                "run_dir": str(work_dir / f"{task}-{model}"),
            }
        )
        log(f"    {result.status} at step {result.step}: test accuracy {result.test_accuracy:.3f}")
    meta = {
        "budget_minutes": budget_minutes,
        "elapsed_s": time.monotonic() - start,
        "seed": seed,
        "train": dataclasses.asdict(TRAIN),
    }
    write_report(Path(out), rows, meta=meta)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", choices=["synthetic"], help="which table to reproduce")
    p.add_argument("--out", type=Path, default=Path("docs"), help="where the report goes")
    p.add_argument("--work-dir", type=Path, default=Path("runs/reproduce"), help="run directories")
    p.add_argument("--budget-minutes", type=float, default=60.0, help="wall-clock budget")
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), help="subset of tasks")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="subset of models")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
