"""A tiny trained model for the analysis tests, trained once per session and stored as a
succeeded run's checkpoint artifacts per test (training it per test would cost ~20 s each)."""

from __future__ import annotations

import json
from pathlib import Path

from experiments.models import Project, Run, RunStatus
from experiments.storage import store_file
from h3lab.config import RunConfig
from tests import factories

CHECKPOINT_FILES = ("model.safetensors", "config.json")


def tiny_source_config() -> RunConfig:
    """Induction head (a copy task, as interventions need), one layer: trains in a second."""
    return factories.tiny_config(device="cpu")


def train_checkpoint(out_dir: Path) -> Path:
    """Train :func:`tiny_source_config` in this process; returns its checkpoint folder."""
    from h3lab.train import train

    result = train(tiny_source_config(), out_dir, resume=False)
    assert result.status == "completed"
    return result.checkpoint_dir


def make_trained_run(project: Project, checkpoint: Path) -> Run:
    """A succeeded training run whose stored (encrypted) artifacts are ``checkpoint``'s files,
    as a worker leaves them."""
    run = factories.make_run(
        project,
        status=RunStatus.SUCCEEDED,
        config=RunConfig.from_dict(json.loads((checkpoint / "config.json").read_text())),
        experiment="analyses",
    )
    for name in CHECKPOINT_FILES:
        store_file(run, checkpoint / name, name).save()
    return run
