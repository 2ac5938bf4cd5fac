"""train() checkpoints bit-exactly, resumes onto the same curve, stops when asked and learns."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from h3lab.checkpoint import find_checkpoint, save_checkpoint
from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.data.datasets import make_datasets
from h3lab.train import Callbacks, EvalResult, Progress, evaluate, load_checkpoint, train

TINY_TASK = TaskConfig(name="induction_head", vocab_size=8, seq_len=8, num_train=256, num_test=64)


def tiny(preset: str = "h3", **train_kw: object) -> RunConfig:
    kw: dict[str, object] = {"steps": 12, "batch_size": 8, "eval_every": 4, "checkpoint_every": 5}
    kw.update(train_kw)
    return RunConfig.build(
        preset=preset,
        d_model=16,
        d_state=8,
        n_head=2,
        task=TINY_TASK,
        train=TrainConfig(**kw),  # type: ignore[arg-type]
    )


def test_a_run_writes_its_checkpoint_metrics_curves_and_log(tmp_path: Path) -> None:
    logs: list[str] = []
    result = train(tiny(), tmp_path, Callbacks(on_log=logs.append))
    assert result.status == "completed" and result.step == 12
    for name in ("metrics.json", "curves.png", "train.log"):
        assert (tmp_path / name).stat().st_size > 0
    files = sorted(p.name for p in (tmp_path / "checkpoint").iterdir())
    assert files == ["config.json", "model.safetensors", "optimizer.safetensors", "state.json"]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["final"]["status"] == "completed"
    assert [r["step"] for r in metrics["history"] if r["kind"] == "eval"] == [4, 8, 12]
    assert logs and logs[-1] in (tmp_path / "train.log").read_text()


def test_a_checkpoint_round_trips_bit_exactly(tmp_path: Path) -> None:
    cfg = tiny()
    train(cfg, tmp_path)
    model, loaded_cfg = load_checkpoint(tmp_path)
    assert loaded_cfg == cfg
    again = tmp_path / "again"
    save_checkpoint(again, model=model, cfg=loaded_cfg)
    reloaded, _ = load_checkpoint(again)
    a, b = model.state_dict(), reloaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_swap_leaves_the_previous_checkpoint_loadable(tmp_path: Path) -> None:
    train(tiny(), tmp_path)
    ckpt = tmp_path / "checkpoint"
    ckpt.rename(tmp_path / "checkpoint.old")  # killed between the two renames
    (tmp_path / "checkpoint.tmp").mkdir()  # and a half-written new one
    assert find_checkpoint(tmp_path) == ckpt
    load_checkpoint(tmp_path)


def test_resuming_after_a_stop_continues_the_same_loss_curve(tmp_path: Path) -> None:
    cfg = tiny(steps=14, log_every=3, checkpoint_every=100)
    whole = train(cfg, tmp_path / "whole")
    calls = {"n": 0}

    def stop_after_six() -> bool:
        calls["n"] += 1
        return calls["n"] > 6

    first = train(cfg, tmp_path / "split", Callbacks(should_stop=stop_after_six))
    assert first.status == "stopped" and first.step == 6
    resumed = train(cfg, tmp_path / "split")
    assert resumed.status == "completed"
    assert resumed.history == whole.history


def test_should_stop_cancels_promptly(tmp_path: Path) -> None:
    start = time.monotonic()
    result = train(tiny(steps=100_000), tmp_path, Callbacks(should_stop=lambda: True))
    assert result.status == "stopped" and result.step == 0
    assert time.monotonic() - start < 10
    assert find_checkpoint(tmp_path) is not None


def test_progress_is_rate_limited_and_reports_the_last_step(tmp_path: Path) -> None:
    seen: list[Progress] = []
    evals: list[EvalResult] = []
    train(tiny(steps=40), tmp_path, Callbacks(on_progress=seen.append, on_eval=evals.append))
    assert seen[-1].step == 40 and seen[-1].total_steps == 40
    assert len(seen) < 40
    assert [e.step for e in evals] == [4 * i for i in range(1, 11)]


def test_early_stopping_ends_the_run_once_accuracy_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A perfect evaluator isolates the loop's rule: stop after `patience` good evaluations.
    def perfect(*_args: object, step: int = 0, **_kw: object) -> EvalResult:
        return EvalResult(step=step, loss=0.0, accuracy=1.0)

    monkeypatch.setattr("h3lab.train.evaluate", perfect)
    result = train(tiny(steps=50, early_stop_acc=0.99, early_stop_patience=2), tmp_path)
    assert result.status == "early_stopped" and result.step == 8


def test_a_checkpoint_of_another_model_is_not_resumed(tmp_path: Path) -> None:
    train(tiny(), tmp_path)
    with pytest.raises(ValueError, match="different model"):
        train(tiny("attention"), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset",
    [
        "attention",
        pytest.param(
            "h3",
            marks=pytest.mark.skipif(
                not os.environ.get("H3LAB_SLOW_TESTS"),
                reason="about 40 s on a 2-core CPU; attention covers the default run",
            ),
        ),
    ],
)
def test_a_tiny_model_learns_induction_head(tmp_path: Path, preset: str) -> None:
    task = TaskConfig(name="induction_head", vocab_size=6, seq_len=6, num_train=2000, num_test=200)
    cfg = RunConfig.build(
        preset=preset,
        d_model=32,
        d_state=16,
        task=task,
        train=TrainConfig(
            steps=1500,
            batch_size=128,
            lr=3e-3,
            ssm_lr=3e-3,
            warmup_steps=20,
            eval_every=50,
            checkpoint_every=10_000,
            early_stop_acc=0.95,
            early_stop_patience=1,
        ),
    )
    result = train(cfg, tmp_path)
    assert result.test_accuracy >= 0.9
    model, _ = load_checkpoint(tmp_path)
    again = evaluate(model, make_datasets(task)[1], batch_size=64, device="cpu")
    assert again.accuracy == pytest.approx(result.test_accuracy)
