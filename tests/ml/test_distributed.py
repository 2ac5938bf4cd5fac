"""Data-parallel training (h3lab.distributed) on CPU with gloo: two real rank processes follow
the single-process loss trajectory, and a checkpoint resumes with another process count.

Tolerance: float32 on CPU, the per-step training loss and the evaluation losses agree with
single-process training within 1e-5 relative over every step (measured: ~1e-7; the
difference is the order of float32 reductions across ranks), the weights within 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from h3lab.checkpoint import load_checkpoint
from h3lab.config import ConfigError, RunConfig, TaskConfig, TrainConfig
from h3lab.distributed import Group
from h3lab.isolation import train_isolated
from h3lab.train import BatchOrder, Callbacks, EvalResult, Progress, TrainResult, train
from scripts.bench_ddp import main as bench_ddp

RTOL = 1e-5
TASK = TaskConfig(name="induction_head", vocab_size=8, seq_len=8, num_train=256, num_test=64)

# Tests marked `distributed` are real multi-process gloo runs: each spawns two ranks (a few
# seconds of imports apiece; ~15 s a test on the 2-core machine under load) and is capped at
# 120 s, a guard for a loaded machine; `-m "not distributed"` leaves them out.


def tiny(processes: int = 1, **train_kw: Any) -> RunConfig:
    kw: dict[str, Any] = {
        "steps": 10,
        "batch_size": 8,
        "eval_every": 5,
        "checkpoint_every": 5,
        "log_every": 1,
        "device": "cpu",
        "processes": processes,
    }
    kw.update(train_kw)
    return RunConfig.build(
        preset="h3", d_model=16, d_state=8, n_head=2, task=TASK, train=TrainConfig(**kw)
    )


def with_processes(cfg: RunConfig, processes: int) -> RunConfig:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, processes=processes))


def losses(result: TrainResult, kind: str = "train", key: str = "train_loss") -> list[float]:
    return [float(r[key]) for r in result.history if r["kind"] == kind]


def assert_same_trajectory(got: list[float], want: list[float]) -> None:
    assert len(got) == len(want) and want
    worst = max(abs(g - w) / abs(w) for g, w in zip(got, want, strict=True))
    assert worst <= RTOL, f"relative difference {worst:.2e} > {RTOL:.0e}: {got} vs {want}"


def stop_after(steps: int) -> Callbacks:
    """Stops a single-process run before step ``steps`` (should_stop is polled once a step)."""
    polls = iter(range(10**9))
    return Callbacks(should_stop=lambda: next(polls) >= steps)


# ----------------------------------------------------------------------------- config


def test_processes_default_to_one_and_old_configs_load_with_one() -> None:
    assert TrainConfig().processes == 1
    stored = tiny().to_dict()
    del stored["train"]["processes"]  # a config stored before data parallelism existed
    assert RunConfig.from_dict(stored).train.processes == 1


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"processes": 0}, "between 1 and 64"),
        ({"processes": 65, "batch_size": 65}, "between 1 and 64"),
        ({"processes": 3, "batch_size": 8}, "must divide batch_size"),
        ({"processes": 2, "device": "cuda:1"}, "rank r takes cuda:r"),
    ],
)
def test_a_process_count_that_cannot_split_the_batch_is_refused(
    kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        tiny(**kw)
    assert set(refused.value.errors) == {"train.processes"}


def test_the_ranks_slices_concatenate_to_the_single_process_batch() -> None:
    idx = BatchOrder(n=100, batch_size=12, seed=3).indices(7)  # (12,)
    for world in (1, 2, 3, 4):
        shards = [Group(r, world, torch.device("cpu")).shard(idx) for r in range(world)]
        assert all(len(s) == 12 // world for s in shards)
        assert torch.equal(torch.cat(shards), idx)


# ----------------------------------------------------------------------------- two ranks


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """The single-process run the two-rank runs must reproduce."""
    return train(tiny(), tmp_path_factory.mktemp("single"))


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_two_gloo_ranks_follow_the_single_process_loss_trajectory(
    reference: TrainResult, tmp_path: Path
) -> None:
    progress: list[Progress] = []
    evals: list[EvalResult] = []
    checkpoints: list[int] = []
    logs: list[str] = []
    callbacks = Callbacks(
        on_progress=progress.append,
        on_eval=evals.append,
        on_checkpoint=lambda path, step: checkpoints.append(step),
        on_log=logs.append,
    )

    result = train(tiny(processes=2), tmp_path, callbacks)

    assert result.status == "completed" and result.step == 10
    assert_same_trajectory(losses(result), losses(reference))
    assert_same_trajectory(
        losses(result, "eval", "test_loss"), losses(reference, "eval", "test_loss")
    )
    assert_same_trajectory(
        losses(result, "eval", "val_loss"), losses(reference, "eval", "val_loss")
    )
    # Rank 0's callbacks reach the launching process; nobody else writes.
    assert [e.step for e in evals] == [5, 10]
    assert progress[-1].step == 10
    assert checkpoints == [5, 10]
    log_text = (tmp_path / "train.log").read_text()
    assert log_text.count(" start ") == 1 and "× 2 processes" in log_text
    assert logs and logs[-1] in log_text
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["config"]["train"]["processes"] == 2
    # The checkpoint holds the unwrapped model: it loads as a plain LanguageModel.
    got, _ = load_checkpoint(tmp_path)
    want, _ = load_checkpoint(reference.checkpoint_dir.parent)
    for (name, a), (_, b) in zip(got.state_dict().items(), want.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL, atol=RTOL, msg=name)


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_a_two_rank_checkpoint_resumes_with_one_process_on_the_same_trajectory(
    tmp_path: Path,
) -> None:
    """Through h3lab.isolation, as the worker runs it: its child launches the ranks, the
    progress comes back, and the stop request reaches both ranks."""
    cfg = tiny(steps=400, eval_every=1000, checkpoint_every=1000)
    seen: list[int] = []
    callbacks = Callbacks(on_progress=lambda p: seen.append(p.step), should_stop=lambda: bool(seen))

    stopped = train_isolated(with_processes(cfg, 2), tmp_path, callbacks, memory_limit_mb=2048)

    assert stopped.status == "stopped" and 1 <= seen[0] <= stopped.step < 400
    at = stopped.step
    resumed = train(cfg, tmp_path, stop_after(10))  # one process, ten more steps
    assert resumed.status == "stopped" and resumed.step == at + 10
    reference = train(cfg, tmp_path / "single", stop_after(at + 10))
    assert_same_trajectory(losses(resumed), losses(reference))
    assert "resumed from" in (tmp_path / "train.log").read_text()


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_a_one_process_checkpoint_resumes_with_two_ranks_on_the_same_trajectory(
    reference: TrainResult, tmp_path: Path
) -> None:
    stopped = train(tiny(), tmp_path, stop_after(3))
    assert stopped.status == "stopped" and stopped.step == 3

    resumed = train(tiny(processes=2), tmp_path)

    assert resumed.status == "completed" and resumed.step == 10
    assert_same_trajectory(losses(resumed), losses(reference))
    assert "resumed from" in (tmp_path / "train.log").read_text()
    assert "with 2 processes" in (tmp_path / "train.log").read_text()


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_a_rank_that_raises_ends_the_run_with_its_exception(tmp_path: Path) -> None:
    train(tiny(steps=1), tmp_path)
    # A wider model over that checkpoint: every rank refuses to resume from it.
    wider = RunConfig.build(
        preset="h3", d_model=32, d_state=8, n_head=2, task=TASK, train=tiny(processes=2).train
    )
    with pytest.raises(ValueError, match="different model or task") as raised:
        train(wider, tmp_path)
    assert any("in rank" in note for note in getattr(raised.value, "__notes__", []))


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_the_scaling_benchmark_runs_one_and_two_gloo_ranks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "bench.json"
    args = "--device cpu --processes 1,2 --steps 4 --d-model 16 --seq-len 16 --batch-per-process 4"

    assert bench_ddp([*args.split(), "--json", str(report)]) == 0

    rows = json.loads(report.read_text())["rows"]
    assert [(r["processes"], r["global_batch"], r["steps"]) for r in rows] == [(1, 4, 4), (2, 8, 4)]
    assert all(r["tokens_per_s"] > 0 and r["device"] == "cpu" for r in rows)
    assert rows[0]["efficiency"] == 1.0
    assert "| 2 | cpu | 8 |" in capsys.readouterr().out


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_a_rank_killed_by_sigkill_ends_the_run_as_out_of_memory(tmp_path: Path) -> None:
    def kill_rank_1(progress: Progress) -> None:
        for child in multiprocessing.active_children():
            if child.name == "h3lab-rank1" and child.pid is not None:
                os.kill(child.pid, signal.SIGKILL)

    cfg = tiny(processes=2, steps=100_000, eval_every=100_000, checkpoint_every=100_000)
    with pytest.raises(MemoryError, match="rank 1 of 2 was killed by SIGKILL"):
        train(cfg, tmp_path, Callbacks(on_progress=kill_rank_1))
    assert not [c for c in multiprocessing.active_children() if c.name.startswith("h3lab-rank")]


def test_compose_has_a_multi_gpu_worker_on_the_gpu_queue_reserving_every_gpu() -> None:
    import yaml

    root = Path(__file__).resolve().parents[2]
    services = yaml.safe_load((root / "compose.yaml").read_text())["services"]
    gpus = services["worker-gpus"]
    assert "--queues=gpu" in gpus["command"] and "--concurrency=1" in gpus["command"]
    assert gpus["profiles"] == ["multi-gpu"]  # opt-in: one-GPU hosts keep worker-gpu
    (device,) = gpus["deploy"]["resources"]["reservations"]["devices"]
    assert device["count"] == "all" and device["capabilities"] == ["gpu"]
    assert "profiles" not in services["worker-gpu"]
