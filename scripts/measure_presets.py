#!/usr/bin/env python3
"""Measure the run form's quick-start presets: train each one, one after another, and record
when it first reaches the target test accuracy — in steps, wall seconds and process CPU
seconds — with the load average before, during (at every evaluation) and after.

Writes one JSON log per preset to ``--out`` (docs/presets/ by default) and prints a table.

    .venv/bin/python scripts/measure_presets.py                      # every preset
    .venv/bin/python scripts/measure_presets.py --only associative_recall/h3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
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
                "test_accuracy": round(ev.accuracy, 4),
                "test_loss": round(ev.loss, 4),
                "wall_s": round(time.monotonic() - start_wall, 2),
                "cpu_s": round(time.process_time() - start_cpu, 2),
                "load_1m": round(os.getloadavg()[0], 2),
            }
        )
        print(f"  {preset.task}/{preset.model}: {evals[-1]}", file=sys.stderr, flush=True)

    def reached_target() -> bool:
        return stop_at_target and any(e["test_accuracy"] >= target for e in evals)

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        result = train(
            cfg, Path(tmp), Callbacks(on_eval=on_eval, should_stop=reached_target), resume=False
        )
    reached = next((e for e in evals if e["test_accuracy"] >= target), None)
    return {
        "task": preset.task,
        "model": preset.model,
        "label": preset.label,
        "form_fields": preset.fields(),
        "config": cfg.to_dict(),
        "target_accuracy": target,
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
        "--stop-at-target", action="store_true", help="end each run at its first eval ≥ target"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    chosen = [p for p in PRESETS if not args.only or f"{p.task}/{p.model}" in args.only]
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"{'preset':34} {'≥target at step':>15} {'wall s':>7} {'cpu s':>6} {'load':>5} {'final':>6}"
    )
    for preset in chosen:
        row = measure(
            preset, target=args.target, seed=args.seed, stop_at_target=args.stop_at_target
        )
        (args.out / f"{preset.task}--{preset.model}.json").write_text(
            json.dumps(row, indent=1) + "\n", encoding="utf-8"
        )
        hit = row["reached"]
        print(
            f"{preset.task + '/' + preset.model:34} "
            f"{hit['step'] if hit else 'never':>15} "
            f"{hit['wall_s'] if hit else '-':>7} {hit['cpu_s'] if hit else '-':>6} "
            f"{row['load_avg_before'][0]:>5} {row['final']['test_accuracy']:>6}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
