"""Training in a capped child process (h3lab.isolation): reports and stop requests cross the
process boundary, and a child that dies is reported, not silently lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from h3lab.config import RunConfig, TaskConfig, TrainConfig
from h3lab.isolation import MemoryLimitExceeded, TrainingFailed, train_isolated
from h3lab.train import Callbacks, TrainResult


def _tiny(steps: int) -> RunConfig:
    return RunConfig.build(
        preset="h3",
        n_layer=1,
        d_model=16,
        d_state=8,
        task=TaskConfig("induction_head", vocab_size=8, seq_len=12, num_train=64, num_test=16),
        train=TrainConfig(steps=steps, batch_size=8, eval_every=1000, checkpoint_every=1000),
    )


def killed_train(*args: Any, **kwargs: Any) -> TrainResult:
    """Stands in for a training the kernel's OOM killer ends."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def raising_train(*args: Any, **kwargs: Any) -> TrainResult:
    raise ValueError("loss became NaN at step 3")


def test_a_stop_request_reaches_the_child_which_checkpoints_and_returns(tmp_path: Path) -> None:
    steps: list[int] = []
    callbacks = Callbacks(
        on_progress=lambda p: steps.append(p.step), should_stop=lambda: bool(steps)
    )

    result = train_isolated(_tiny(100_000), tmp_path, callbacks, memory_limit_mb=1024)

    assert result.status == "stopped"
    assert 1 <= steps[0] <= result.step < 100_000
    assert (tmp_path / "checkpoint").is_dir()


def test_a_child_killed_by_sigkill_counts_as_out_of_memory(tmp_path: Path) -> None:
    with pytest.raises(MemoryLimitExceeded, match=r"^run exceeded its memory limit of 512 MiB"):
        train_isolated(_tiny(5), tmp_path, memory_limit_mb=512, train=killed_train)


def test_an_exception_in_the_child_comes_back_with_its_traceback(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed) as failed:
        train_isolated(_tiny(5), tmp_path, train=raising_train)

    assert failed.value.error == "ValueError: loss became NaN at step 3"
    assert "raising_train" in failed.value.child_traceback
