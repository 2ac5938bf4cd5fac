#!/usr/bin/env python3
"""Data-parallel scaling: training throughput (tokens/s) with 1 → N processes.

Weak scaling: every rank trains ``--batch-per-process`` sequences a step, so N processes
train an N× larger global batch; efficiency is ``tokens/s(N) / (N × tokens/s(1))``. Each
row is one :func:`h3lab.train.train` run through :mod:`h3lab.distributed` (nccl, one GPU
per rank, on CUDA; gloo on CPU); tokens/s is measured by rank 0 between its first progress
report (after step 1) and its last, so process start-up, the first step (allocator and
kernel warm-up) and the final evaluation are left out.

    python scripts/bench_ddp.py                      # 1, 2, 4, … up to every visible GPU
    python scripts/bench_ddp.py --device cpu --processes 1,2 --steps 20 --d-model 32
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the checkout importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.train import Callbacks, Progress, resolve_device, train


def default_processes(device: str) -> list[int]:
    """1, 2, 4, … up to the visible GPUs (and the count itself); ``[1, 2]`` on CPU."""
    if resolve_device(device).type != "cuda":
        return [1, 2]
    gpus = torch.cuda.device_count()
    counts = [n for n in (1, 2, 4, 8, 16, 32, 64) if n <= gpus]
    return counts + ([gpus] if gpus not in counts else [])


def config(args: argparse.Namespace, processes: int) -> RunConfig:
    task = TaskConfig(
        name="associative_recall",
        vocab_size=args.vocab_size,
        seq_len=args.seq_len,
        num_train=max(args.batch_per_process * processes * 4, 64),
        num_test=64,
        num_val=64,
    )
    return RunConfig.build(
        preset=args.preset,
        n_layer=args.n_layer,
        d_model=args.d_model,
        task=task,
        train=TrainConfig(
            steps=args.steps,
            batch_size=args.batch_per_process * processes,
            eval_every=args.steps + 1,  # only the final evaluation, after the timed steps
            checkpoint_every=args.steps + 1,
            warmup_steps=0,
            device=args.device,
            processes=processes,
        ),
    )


def measure(args: argparse.Namespace, processes: int) -> dict[str, Any]:
    """One run with ``processes`` ranks: its throughput and wall time."""
    cfg = config(args, processes)
    progress: list[Progress] = []
    with tempfile.TemporaryDirectory(prefix="bench_ddp-") as out:
        t0 = time.monotonic()
        result = train(cfg, Path(out), Callbacks(on_progress=progress.append), resume=False)
        wall = time.monotonic() - t0
    first, last = progress[0], progress[-1]
    # A fresh run's report: tokens_per_s = step / elapsed_s × tokens per step.
    tokens_per_step = last.tokens_per_s * last.elapsed_s / last.step
    if last.step > first.step and last.elapsed_s > first.elapsed_s:
        rate = (last.step - first.step) / (last.elapsed_s - first.elapsed_s)
    else:  # too short to leave the first step out
        rate = last.step / last.elapsed_s
    return {
        "processes": processes,
        "global_batch": cfg.train.batch_size,
        "steps": result.step,
        "tokens_per_s": rate * tokens_per_step,
        "train_s": last.elapsed_s,
        "wall_s": wall,
        "device": result.device,
    }


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add speed-up and efficiency against the one-process row (when there is one)."""
    base = next((r["tokens_per_s"] for r in rows if r["processes"] == 1), None)
    for r in rows:
        speedup = r["tokens_per_s"] / base if base else None
        r["speedup"] = speedup
        r["efficiency"] = speedup / r["processes"] if speedup is not None else None
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| processes | device (rank 0) | global batch | tokens/s | speed-up | efficiency "
        "| wall s |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        speedup = f"{r['speedup']:.2f}×" if r["speedup"] is not None else "–"
        eff = f"{r['efficiency']:.0%}" if r["efficiency"] is not None else "–"
        lines.append(
            f"| {r['processes']} | {r['device']} | {r['global_batch']} | "
            f"{r['tokens_per_s']:,.0f} | {speedup} | {eff} | {r['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--processes", help="comma-separated process counts (default: 1, 2, 4, … GPUs)")
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-per-process", type=int, default=32)
    p.add_argument("--preset", default="h3")
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--vocab-size", type=int, default=30)
    p.add_argument("--json", type=Path, help="also write the rows here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    counts = (
        [int(n) for n in args.processes.split(",")]
        if args.processes
        else default_processes(args.device)
    )
    rows = summarise([measure(args, n) for n in counts])
    print(format_table(rows))
    if args.json:
        report = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
