"""Speed benchmark: one H3 layer against one attention layer.

    python -m h3lab.bench                      # full run, table on stdout, JSON to out/bench.json
    python -m h3lab.bench --lengths 1024 --contexts 128 --repeat 1

Measures, for d_model 256, batch 4, float32 by default:

* forward+backward milliseconds of one layer at each sequence length (median of ``--repeat``
  runs after ``--warmup``), each (layer, length) in a fresh subprocess so that allocator state
  and peak memory are its own;
* peak memory of that forward+backward — on CPU the growth of the process's peak resident set
  (``ru_maxrss``) over its size just before the first pass (tracemalloc cannot see torch's
  allocations), on CUDA ``max_memory_allocated`` over what was allocated before;
* per-token generation latency at batch 1 after a context of each ``--contexts`` length:
  H3's recurrent ``step`` (fixed-size state) against attention's ``step`` with a KV cache.

The table prints the reference figures of the original H3 PyTorch implementation measured
on the same 2-core CPU, and this project's goals, beside the measurements.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Reference: the original H3 PyTorch implementation on the 2-core CPU (ms fwd+bwd, batch 4).
REF_H3_MS = {256: 85.0, 1024: 426.0, 4096: 2291.0, 16384: 14324.0}
REF_ATTN_MS = {256: 16.0, 1024: 113.0, 4096: 1046.0, 16384: 15271.0}
REF_H3_PEAK_GIB_16K = 4.3
REF_H3_STEP_MS = (0.5, 0.8)
# Goals.
GOAL_SPEEDUP = 3.0  # ≥ 3× faster than REF_H3_MS at every L ≥ 1k
GOAL_FASTER_THAN_ATTN_FROM = 2048
GOAL_PEAK_GIB_16K = 1.5
GOAL_STEP_MS = 0.2

LAYERS = ("h3", "attn")


@dataclass(frozen=True)
class LayerSpec:
    """What one benchmarked layer is."""

    kind: str  # "h3" | "attn"
    d_model: int = 256
    d_state: int = 64
    head_dim: int = 1
    n_head: int = 4


def build_layer(spec: LayerSpec, device: str, seed: int = 0) -> Any:
    import torch

    from h3lab.nn.attention import Attention
    from h3lab.nn.config import LMConfig
    from h3lab.nn.h3 import H3

    cfg = LMConfig(
        vocab_size=2,
        d_model=spec.d_model,
        d_state=spec.d_state,
        head_dim=spec.head_dim,
        n_head=spec.n_head,
        mixers=(spec.kind,),
    )
    layer = H3(cfg) if spec.kind == "h3" else Attention(cfg)
    layer.reset_parameters(torch.Generator().manual_seed(seed))
    return layer.to(device)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str) -> float:
    """Seconds for one call of fn, synchronising the device around it."""
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _maxrss_bytes() -> int:
    # Linux reports ru_maxrss in KiB (macOS in bytes).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_train(
    spec: LayerSpec, L: int, batch: int, device: str, threads: int, warmup: int, repeat: int
) -> dict[str, Any]:
    """Forward+backward time and peak memory of one layer at length L (run in a fresh
    process for a clean peak)."""
    import torch

    torch.set_num_threads(threads)
    layer = build_layer(spec, device)
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(batch, L, spec.d_model, device=device, generator=g, requires_grad=True)
    grad_out = torch.randn(batch, L, spec.d_model, device=device, generator=g)

    def fwd_bwd(x: torch.Tensor = x, grad_out: torch.Tensor = grad_out) -> None:
        layer(x).backward(grad_out)
        x.grad = None
        layer.zero_grad(set_to_none=True)

    # One short pass first, so one-time library set-up (thread pools, BLAS/FFT buffers, lazy
    # imports) is in the baseline rather than charged to the config being measured.
    small = min(L, 64)
    fwd_bwd(x[:, :small].detach().requires_grad_(), grad_out[:, :small])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _maxrss_bytes()
    times = [_timed(fwd_bwd, device) for _ in range(warmup + repeat)][warmup:]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _maxrss_bytes() - base
    return {
        "layer": spec.kind,
        "L": L,
        "ms": 1000 * statistics.median(times),
        "ms_min": 1000 * min(times),
        "peak_mib": peak / 2**20,
    }


def measure_step(
    spec: LayerSpec, contexts: list[int], device: str, threads: int, steps: int
) -> list[dict[str, Any]]:
    """Per-token latency of ``step`` at batch 1 after prefilling each context length."""
    import torch

    torch.set_num_threads(threads)
    layer = build_layer(spec, device).eval()
    g = torch.Generator(device=device).manual_seed(2)
    rows = []
    with torch.no_grad():
        for ctx in contexts:
            state = layer.allocate_state(1, ctx + steps + 8, device)
            layer(torch.randn(1, ctx, spec.d_model, device=device, generator=g), state)
            xs = torch.randn(steps + 8, 1, spec.d_model, device=device, generator=g)
            for i in range(8):  # warm-up steps
                layer.step(xs[i], state)
            times = [_timed(functools.partial(layer.step, x, state), device) for x in xs[8:]]
            rows.append(
                {
                    "layer": spec.kind,
                    "context": ctx,
                    "ms_per_token": 1000 * statistics.median(times),
                }
            )
    return rows


# -------------------------------------------------------------------------------- driver


# glibc serves blocks over 32 MiB with a fresh mmap and unmaps them on free, so every large
# temporary pays page faults again; at 4k-16k tokens that is a quarter of the H3 layer's time.
# These settings (opt-in, --retain-memory) keep freed memory in the heap for reuse.
RETAIN_MALLOC_ENV = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 40),
    "MALLOC_TOP_PAD_": str(512 << 20),
}


def _run_worker(
    payload: dict[str, Any], in_process: bool, retain_memory: bool = False
) -> dict[str, Any]:
    if in_process:
        return _worker_main(payload)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ)
    if retain_memory:
        env.update(RETAIN_MALLOC_ENV)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "h3lab.bench", "--worker", json.dumps(payload)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker failed for {payload}:\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _worker_main(payload: dict[str, Any]) -> dict[str, Any]:
    spec = LayerSpec(**payload["spec"])
    return measure_train(
        spec,
        payload["L"],
        payload["batch"],
        payload["device"],
        payload["threads"],
        payload["warmup"],
        payload["repeat"],
    )


def _ints(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1024 if part.endswith("k") else 1
        out.append(int(part.rstrip("k")) * mult)
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m h3lab.bench",
        description=(
            "Time one H3 layer against one attention layer: forward+backward ms and peak "
            "memory per sequence length, and per-token generation latency per context "
            "length. Prints a table (with the original H3 implementation's reference figures "
            "and the goals) and writes JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads on CPU")
    p.add_argument(
        "--lengths",
        type=_ints,
        default=[256, 1024, 2048, 4096, 16384],
        help="sequence lengths for forward+backward, comma separated (1k = 1024)",
    )
    p.add_argument(
        "--contexts",
        type=_ints,
        default=[128, 1024, 4096, 16384],
        help="context lengths for generation latency, comma separated",
    )
    p.add_argument("--batch", type=int, default=4, help="batch size for forward+backward")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--d-state", type=int, default=64, help="SSM state size N")
    p.add_argument("--head-dim", type=int, default=1, help="H3 head dimension")
    p.add_argument("--n-head", type=int, default=4, help="attention heads")
    p.add_argument("--layers", default="h3,attn", help="which layers to run: h3, attn or both")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes before timing")
    p.add_argument("--repeat", type=int, default=3, help="timed passes (median reported)")
    p.add_argument("--gen-steps", type=int, default=50, help="timed generation steps")
    p.add_argument("--out", type=Path, default=Path("out/bench.json"), help="JSON output path")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run every config in this process (faster, but peak memory is then cumulative)",
    )
    p.add_argument(
        "--retain-memory",
        action="store_true",
        help="run workers with glibc malloc tuned to reuse freed memory instead of unmapping "
        "it (MALLOC_MMAP_MAX_=0 …): fewer page faults on large temporaries",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one config, JSON on stdout
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker_main(json.loads(args.worker))))
        return 0

    import torch
    from tqdm import tqdm

    device = resolve_device(args.device)
    layers = [k.strip() for k in args.layers.split(",") if k.strip()]
    bad = [k for k in layers if k not in LAYERS]
    if bad:
        raise SystemExit(f"unknown layer {bad[0]!r}; choose from {', '.join(LAYERS)}")
    specs = {
        k: LayerSpec(k, args.d_model, args.d_state, args.head_dim, args.n_head) for k in layers
    }

    load_start = os.getloadavg()[0]
    train: list[dict[str, Any]] = []
    jobs = [(k, L) for L in args.lengths for k in layers]
    for kind, L in tqdm(jobs, desc="forward+backward", file=sys.stderr):
        payload = {
            "spec": asdict(specs[kind]),
            "L": L,
            "batch": args.batch,
            "device": device,
            "threads": args.threads,
            "warmup": args.warmup,
            "repeat": args.repeat,
        }
        train.append(_run_worker(payload, args.in_process, args.retain_memory))

    generation: list[dict[str, Any]] = []
    for kind in tqdm(layers, desc="generation", file=sys.stderr):
        generation += measure_step(specs[kind], args.contexts, device, args.threads, args.gen_steps)

    report = summarise(args, device, train, generation, torch.__version__)
    # Other work on the machine inflates every timing; record how busy it was.
    report["meta"]["load_avg_1min"] = [round(load_start, 2), round(os.getloadavg()[0], 2)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(report))
    print(f"\nwrote {args.out}")
    return 0


def summarise(
    args: argparse.Namespace,
    device: str,
    train: list[dict[str, Any]],
    generation: list[dict[str, Any]],
    torch_version: str,
) -> dict[str, Any]:
    """Merge per-layer measurements into rows keyed by length/context, with references and
    goal verdicts (None where a goal does not apply or a layer was not run)."""
    by = {(r["layer"], r["L"]): r for r in train}
    rows = []
    for L in args.lengths:
        h3, attn = by.get(("h3", L)), by.get(("attn", L))
        ref = REF_H3_MS.get(L)
        row: dict[str, Any] = {
            "L": L,
            "h3_ms": h3 and h3["ms"],
            "attn_ms": attn and attn["ms"],
            "h3_peak_mib": h3 and h3["peak_mib"],
            "attn_peak_mib": attn and attn["peak_mib"],
            "ref_h3_ms": ref,
            "ref_attn_ms": REF_ATTN_MS.get(L),
            "goal_h3_ms": ref / GOAL_SPEEDUP if ref is not None and L >= 1024 else None,
        }
        row["speedup_vs_ref"] = ref / h3["ms"] if h3 and ref else None
        row["meets_speed_goal"] = (
            h3["ms"] <= row["goal_h3_ms"] if h3 and row["goal_h3_ms"] is not None else None
        )
        row["h3_faster_than_attn"] = h3["ms"] < attn["ms"] if h3 and attn else None
        rows.append(row)
    gen_by = {(r["layer"], r["context"]): r["ms_per_token"] for r in generation}
    gen_rows = [
        {
            "context": c,
            "h3_ms_per_token": gen_by.get(("h3", c)),
            "attn_ms_per_token": gen_by.get(("attn", c)),
            "goal_h3_ms_per_token": GOAL_STEP_MS,
        }
        for c in args.contexts
    ]
    peak16 = by.get(("h3", 16384))
    h3_steps = [r["h3_ms_per_token"] for r in gen_rows if r["h3_ms_per_token"] is not None]
    goals = {
        "speed_3x_ref_from_1k": _all(r["meets_speed_goal"] for r in rows),
        "h3_faster_than_attn_from_2k": _all(
            r["h3_faster_than_attn"] for r in rows if r["L"] >= GOAL_FASTER_THAN_ATTN_FROM
        ),
        "peak_16k_within_1_5_gib": (
            peak16["peak_mib"] / 1024 <= GOAL_PEAK_GIB_16K if peak16 else None
        ),
        "step_within_0_2_ms": max(h3_steps) <= GOAL_STEP_MS if h3_steps else None,
        # "Flat": the slowest context costs at most 1.5× the fastest (noise allowance).
        "step_flat_in_context": max(h3_steps) <= 1.5 * min(h3_steps) if h3_steps else None,
    }
    return {
        "meta": {
            "device": device,
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "threads": args.threads,
            "torch": torch_version,
            "batch": args.batch,
            "d_model": args.d_model,
            "d_state": args.d_state,
            "head_dim": args.head_dim,
            "n_head": args.n_head,
            "dtype": "float32",
            "warmup": args.warmup,
            "repeat": args.repeat,
            "malloc": "retain (MALLOC_MMAP_MAX_=0)" if args.retain_memory else "glibc default",
            "memory": "cuda max_memory_allocated"
            if device.startswith("cuda")
            else "ru_maxrss growth per fresh subprocess"
            if not args.in_process
            else "ru_maxrss growth, cumulative (in-process)",
        },
        "train": rows,
        "generation": gen_rows,
        "reference": {
            "h3_ms": REF_H3_MS,
            "attn_ms": REF_ATTN_MS,
            "h3_peak_gib_16k": REF_H3_PEAK_GIB_16K,
            "h3_step_ms": list(REF_H3_STEP_MS),
        },
        "goals": goals,
    }


def _all(values: Any) -> bool | None:
    vals = [v for v in values if v is not None]
    return all(vals) if vals else None


def _f(v: float | None, fmt: str = "{:,.0f}") -> str:
    return "—" if v is None else fmt.format(v)


def format_table(report: dict[str, Any]) -> str:
    m = report["meta"]
    lines = [
        f"Forward+backward, one layer: d_model {m['d_model']}, batch {m['batch']}, "
        f"{m['dtype']}, {m['device']}, {m['threads']} threads, torch {m['torch']}, "
        f"malloc: {m['malloc']}",
        "1-min load average at start / end: "
        + " / ".join(f"{v:.1f}" for v in m.get("load_avg_1min", []))
        + f" on {m['cpu_count']} CPUs",
        "",
        f"{'L':>6} | {'H3 ms':>8} {'ref':>7} {'goal':>6} {'×ref':>5} | {'attn ms':>8} "
        f"{'ref':>7} | {'H3<attn':>7} | {'H3 MiB':>7} {'attn MiB':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    for r in report["train"]:
        faster = r["h3_faster_than_attn"]
        lines.append(
            f"{r['L']:>6} | {_f(r['h3_ms']):>8} {_f(r['ref_h3_ms']):>7} "
            f"{_f(r['goal_h3_ms'], '≤{:,.0f}'):>6} {_f(r['speedup_vs_ref'], '{:.1f}'):>5} | "
            f"{_f(r['attn_ms']):>8} {_f(r['ref_attn_ms']):>7} | "
            f"{'—' if faster is None else ('yes' if faster else 'no'):>7} | "
            f"{_f(r['h3_peak_mib']):>7} {_f(r['attn_peak_mib']):>8}"
        )
    lines += [
        "",
        f"Peak memory goal at 16k: ≤ {GOAL_PEAK_GIB_16K} GiB for H3 "
        f"(reference {REF_H3_PEAK_GIB_16K} GiB); measured by {m['memory']}.",
        "",
        "Generation, batch 1: ms per token after a context of L tokens",
        f"{'context':>8} | {'H3 step':>8} {'goal':>6} {'ref':>8} | {'attn+KV':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    ref_step = "{}–{}".format(*REF_H3_STEP_MS)
    for r in report["generation"]:
        lines.append(
            f"{r['context']:>8} | {_f(r['h3_ms_per_token'], '{:.3f}'):>8} "
            f"{'≤' + str(GOAL_STEP_MS):>6} {ref_step:>8} | "
            f"{_f(r['attn_ms_per_token'], '{:.3f}'):>8}"
        )
    lines += ["", "Goals:"]
    for name, ok in report["goals"].items():
        lines.append(f"  {name:<30} {'n/a' if ok is None else ('met' if ok else 'NOT met')}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
