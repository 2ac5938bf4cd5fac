#!/usr/bin/env python3
"""Measure the run form's quick-start presets: train each one, one after another, and record
when its *validation* accuracy first reaches the target — in steps, wall seconds and process
CPU seconds, with the test accuracy at that evaluation beside it — and the load average
before, during (at every evaluation) and after. The test split decides nothing: presets are
chosen on validation, and the test accuracy is what is reported.

Writes one JSON log per preset to ``--out`` (docs/presets/ by default) and prints a table.

    .venv/bin/python scripts/measure_presets.py                      # every preset
    .venv/bin/python scripts/measure_presets.py --only associative_recall/h3
    .venv/bin/python scripts/measure_presets.py --only induction_head_safari/h3 \
        --set batch_size=64 --set steps=2000 --out docs/presets/candidates  # a candidate
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from experiments.presets import PRESETS, Preset  # noqa: E402
from h3lab.train import Callbacks, EvalResult, train  # noqa: E402


def measure(preset: Preset, *, target: float, seed: int, stop_at_target: bool) -> dict[str, Any]:
    cfg = preset.config(seed=seed)
    evals: list[dict[str, Any]] = []
    start_wall, start_cpu = time.monotonic(), time.process_time()

    def on_eval(ev: EvalResult) -> None:
        evals.append(
            {
                "step": ev.step,
                "val_accuracy": None if ev.val_accuracy is None else round(ev.val_accuracy, 4),
                "test_accuracy": round(ev.accuracy, 4),
                "test_loss": round(ev.loss, 4),
                "wall_s": round(time.monotonic() - start_wall, 2),
                "cpu_s": round(time.process_time() - start_cpu, 2),
                "load_1m": round(os.getloadavg()[0], 2),
            }
        )
        print(f"  {preset.task}/{preset.model}: {evals[-1]}", file=sys.stderr, flush=True)

    def hit(e: dict[str, Any]) -> bool:
        return e["val_accuracy"] is not None and e["val_accuracy"] >= target

    def reached_target() -> bool:
        return stop_at_target and any(hit(e) for e in evals)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            cfg, Path(tmp), Callbacks(on_eval=on_eval, should_stop=reached_target), resume=False
        )
    reached = next((e for e in evals if hit(e)), None)
    return {
        "task": preset.task,
        "model": preset.model,
        "label": preset.label,
        "form_fields": preset.fields(),
        "config": cfg.to_dict(),
        "target_accuracy": target,
        "target_on": "val",
        "stopped_at_target": stop_at_target,
        "reached": reached,
        "final": {
            "status": result.status,
            "step": result.step,
            "test_accuracy": round(result.test_accuracy, 4),
            "wall_s": round(time.monotonic() - start_wall, 2),
            "cpu_s": round(time.process_time() - start_cpu, 2),
        },
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "cpus": os.cpu_count(),
        "torch_threads": _torch_threads(),
        "python": platform.python_version(),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "evals": evals,
    }


def _change(text: str) -> tuple[str, str | int | float]:
    """``FIELD=VALUE`` → (field, value): a task name, or a number."""
    name, _, value = text.partition("=")
    known = {f.name for f in fields(Preset)} - {"model"}
    if name not in known or not value:
        raise SystemExit(f"--set {text}: expected FIELD=VALUE with FIELD one of {sorted(known)}")
    if name == "task":
        return name, value
    return name, float(value) if any(c in value for c in ".e") else int(value)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "presets")
    parser.add_argument("--only", action="append", help="task/model (repeatable)")
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a loaded 2-core machine a second thread mostly waits)",
    )
    parser.add_argument(
        "--stop-at-target",
        action="store_true",
        help="end each run at its first evaluation with validation accuracy ≥ target",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="measure a candidate: the preset with this field changed (repeatable; e.g. "
        "batch_size=64, or task=induction_head for another task); the log's name lists the "
        "changes",
    )
    args = parser.parse_args(argv)
    changes = dict(_change(c) for c in args.set)
    import torch

    torch.set_num_threads(args.threads)
    chosen = [
        replace(p, **changes)  # type: ignore[arg-type]
        for p in PRESETS
        if not args.only or f"{p.task}/{p.model}" in args.only
    ]
    suffix = "".join(f"--{k}={v}" for k, v in changes.items())
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"{'preset':34} {'val≥target step':>15} {'wall s':>7} {'cpu s':>6} {'load':>5} "
        f"{'test':>6} {'final':>6}"
    )
    for preset in chosen:
        row = measure(
            preset, target=args.target, seed=args.seed, stop_at_target=args.stop_at_target
        )
        (args.out / f"{preset.task}--{preset.model}{suffix}.json").write_text(
            json.dumps(row, indent=1) + "\n", encoding="utf-8"
        )
        hit = row["reached"]
        print(
            f"{preset.task + '/' + preset.model:34} "
            f"{hit['step'] if hit else 'never':>15} "
            f"{hit['wall_s'] if hit else '-':>7} {hit['cpu_s'] if hit else '-':>6} "
            f"{row['load_avg_before'][0]:>5} {hit['test_accuracy'] if hit else '-':>6} "
            f"{row['final']['test_accuracy']:>6}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
