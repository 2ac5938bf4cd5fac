"""Probes write PNG, SVG and JSON, and their scores mean what they say."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from h3lab.config import RunConfig, TaskConfig
from h3lab.nn.lm import LanguageModel
from h3lab.probes import induction_probe, run_probe


def _model(preset: str, task: TaskConfig) -> tuple[LanguageModel, RunConfig]:
    cfg = RunConfig.build(preset=preset, d_model=16, d_state=8, n_head=2, task=task)
    return LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0)), cfg


AR = TaskConfig(name="associative_recall", vocab_size=10, seq_len=12, num_train=8, num_test=64)


@pytest.mark.parametrize(
    ("preset", "kind"),
    [
        ("attention", "induction"),
        ("attention", "attention"),
        ("h3", "kernels"),
        ("h3", "recall"),
        ("shift", "kernels"),
    ],
)
def test_each_probe_writes_png_svg_and_json(tmp_path: Path, preset: str, kind: str) -> None:
    model, cfg = _model(preset, AR)
    data = run_probe(kind, model, cfg, tmp_path)
    for ext in ("png", "svg", "json"):
        assert (tmp_path / f"{kind}.{ext}").stat().st_size > 0
    assert json.loads((tmp_path / f"{kind}.json").read_text()) == data


def test_the_induction_probe_scores_every_attention_head(tmp_path: Path) -> None:
    model, _ = _model("attention", AR)
    data = induction_probe(model, tmp_path, half_len=6, n_seqs=4)
    assert [(h["layer"], h["head"]) for h in data["heads"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for head in data["heads"]:
        assert 0.0 <= head["prefix_matching"] <= 1.0
        assert -1.0 <= head["copying"] <= 1.0
        assert head["hook"].endswith("mixer.hook_pattern")


def test_the_recall_probe_groups_every_example_by_key_position(tmp_path: Path) -> None:
    model, cfg = _model("h3", AR)
    data = run_probe("recall", model, cfg, tmp_path)
    assert sum(data["count_by_position"]) == 64
    assert all(p < 11 for p in data["positions"])


def test_probes_that_do_not_apply_say_why(tmp_path: Path) -> None:
    model, cfg = _model("h3", AR)
    with pytest.raises(ValueError, match="no attention layers"):
        run_probe("attention", model, cfg, tmp_path)
    ih = TaskConfig(name="induction_head", vocab_size=10, seq_len=12)
    with pytest.raises(ValueError, match="associative_recall"):
        run_probe("recall", model, RunConfig.build(preset="h3", task=ih), tmp_path)
