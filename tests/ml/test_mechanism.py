"""The mechanism study runs end to end on tiny budgets, measures what it says, and reports every
claim with its numbers (found or not)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from h3lab.__main__ import main
from h3lab.mechanism import (
    StudyConfig,
    Test,
    analyse,
    chance,
    collapse,
    lag_one_mass,
    previous_token_scores,
)
from h3lab.nn.lm import LanguageModel

TINY = StudyConfig(
    sizes={"induction_head": (8, 12), "associative_recall": (8, 11)},
    d_model=16,
    steps=4,
    batch_size=8,
    examples=24,
)


def test_collapse_and_chance_mean_what_they_say() -> None:
    assert collapse(0.9, 0.2, 0.2) == pytest.approx(1.0)
    assert collapse(0.9, 0.9, 0.2) == pytest.approx(0.0)
    assert math.isnan(collapse(0.2, 0.1, 0.2))
    assert chance(torch.tensor([3, 4, 3, 5])) == pytest.approx(1 / 3)
    t = Test("L0.head0", "previous token", "h", None, 0.1, 0.1, collapse=0.8, restored=0.6)
    assert t.found and not Test("x", "memory", "h", None, 0, 0, collapse=0.8, restored=0.2).found


def test_a_previous_token_head_scores_one() -> None:
    cfg = TINY.run_config("induction_head", "attention")
    model = LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0)).eval()
    # Make layer 0's only head attend to the previous token: queries and keys from rotary
    # positions alone would not do it, so overwrite the pattern through its hook.
    name = "blocks.0.mixer.hook_pattern"
    L = cfg.task.seq_len

    def previous(_m: object, _a: object, out: torch.Tensor) -> torch.Tensor:
        target = torch.zeros_like(out)
        target[..., 0, 0] = 1
        i = torch.arange(1, L)
        target[..., i, i - 1] = 1
        return target

    handle = model.get_submodule(name).register_forward_hook(previous)
    try:
        scores = previous_token_scores(model, torch.randint(7, (4, L)), 0)
    finally:
        handle.remove()
    assert scores == [pytest.approx(1.0)]


def test_the_shift_kernel_signature_is_a_fraction() -> None:
    cfg = TINY.run_config("associative_recall", "h3")
    model = LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0))
    assert 0.0 <= lag_one_mass(model, 0) <= 1.0


@pytest.mark.parametrize("model_name", ["attention", "h3"])
def test_analyse_tests_the_designed_components(model_name: str) -> None:
    cfg = TINY.run_config("induction_head", model_name)
    model = LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0))
    cell = analyse(model, cfg, examples=24, seed=0)
    roles = [(t["component"], t["role"]) for t in cell["tests"]]
    if model_name == "attention":
        assert roles[:2] == [("L0.head0", "previous token"), ("L1.head0", "match and copy")]
    else:
        assert roles == [
            ("L0.shift_ssm", "previous token"),
            ("L0.diag_ssm", "memory"),
            ("L1.shift_ssm", "previous token"),
            ("L1.diag_ssm", "memory"),
        ]
    for t in cell["tests"]:
        assert 0.0 <= t["zero_accuracy"] <= 1.0 and 0.0 <= t["mean_accuracy"] <= 1.0
        # previous-token components are patched on key-corrupted inputs, the rest on values
        assert t["corruption"] == ("keys" if t["role"] == "previous token" else "values")
    assert cell["examples"] == 24 and len(cell["inputs_sha256"]) == 64


def test_analyse_splits_a_small_test_split_in_half() -> None:
    # More examples asked for than half the test split holds: the reference and the analysed
    # examples share what there is, disjointly, instead of leaving nothing to analyse.
    cfg = TINY.run_config("associative_recall", "h3")
    held = cfg.task.num_test
    model = LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0))
    cell = analyse(model, cfg, examples=held, seed=0)
    assert cell["examples"] == held // 2


def test_the_study_command_writes_the_report_json_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "m"
    args = ["study", "mechanism", "--out", str(out), "--steps", "3", "--d-model", "16"]
    assert main([*args, "--examples", "16", "--tasks", "associative_recall"]) == 0
    data = json.loads((out / "mechanism.json").read_text())
    assert set(data["cells"]) == {"associative_recall-attention", "associative_recall-h3"}
    report = (out / "mechanism.md").read_text()
    for name in data["cells"]:
        assert f"## {name}" in report and (out / f"{name}.png").stat().st_size > 0
        assert (out / f"{name}.svg").exists()
    assert "Found:" in report and "Not found:" in report
    # rerunning reuses the trained runs (resume) and writes the same numbers
    assert main([*args, "--examples", "16", "--tasks", "associative_recall"]) == 0
    again = json.loads((out / "mechanism.json").read_text())
    assert again["cells"] == data["cells"]
    training = data["cells"]["associative_recall-h3"]["training"]
    assert (training["status"], training["step"], training["budget"]) == ("completed", 3, 3)
    assert "Trained 3 of 3 steps (ran its budget)" in report


def test_the_paper_protocol_trains_each_cell_as_the_reproduction_does() -> None:
    from h3lab import reproduce

    paper = StudyConfig(protocol="paper", seed=2)
    for task, row in (("induction_head_safari", "induction_head"),
                      ("associative_recall_safari", "associative_recall")):  # fmt: skip
        for model in ("attention", "h3"):
            cfg = paper.run_config(task, model)
            steps = reproduce.PAPER_STEPS[row]
            assert cfg == reproduce.run_config(
                row,
                model,
                device="cpu",
                seed=2,
                train=replace(reproduce.TRAIN, steps=steps, warmup_steps=steps // 10),
            )
    attention = paper.run_config("induction_head_safari", "attention").model
    assert (attention.n_head, attention.mixers, attention.pos_embed) == (
        1,
        ("attn", "attn"),
        "learned",
    )
    with pytest.raises(ValueError, match="paper's tasks"):
        StudyConfig(protocol="paper", tasks=("induction_head",))
    with pytest.raises(ValueError, match="protocol"):
        StudyConfig(protocol="fast")
