"""A run's history as files: ``metrics.json`` and a loss/accuracy ``curves.png``.

History rows are dicts with a ``kind``: ``"train"`` rows carry ``step``, ``train_loss`` (mean
over the last ``log_every`` steps) and ``lr``; ``"eval"`` rows carry ``step``, ``test_loss``
and ``test_accuracy``. Plots use matplotlib's object API with the Agg canvas, so no global
backend is switched and no display is needed.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from h3lab.checkpoint import write_json


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_metrics(path: Path, history: list[dict[str, Any]], final: dict[str, Any]) -> None:
    write_json(path, json_safe({"final": final, "history": history}))


def plot_curves(path: Path, history: list[dict[str, Any]], *, title: str = "") -> None:
    """Training/test loss and test accuracy against step, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    train = [r for r in history if r.get("kind") == "train"]
    evals = [r for r in history if r.get("kind") == "eval"]
    fig = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot([r["step"] for r in train], [r["train_loss"] for r in train], label="train")
    ax_loss.plot(
        [r["step"] for r in evals], [r["test_loss"] for r in evals], "o-", ms=3, label="test"
    )
    ax_loss.set(xlabel="step", ylabel="loss (all tokens)", yscale="log")
    ax_loss.legend()
    ax_acc.plot([r["step"] for r in evals], [r["test_accuracy"] for r in evals], "o-", ms=3)
    ax_acc.set(xlabel="step", ylabel="test accuracy (final token)", ylim=(0, 1.02))
    ax_acc.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
