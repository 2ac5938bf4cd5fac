"""The reproduction driver: budget shares, parallel worker processes, failed cells and the report.

The table itself is a 60-minute command (docs/synthetic.md); here cells train a few steps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from h3lab.__main__ import main
from h3lab.reproduce import aggregate, budget_share, reproduce_synthetic, run_config


def test_one_lane_splits_what_is_left_evenly_over_the_cells_not_started() -> None:
    assert budget_share(0.0, 800.0, 1, [], 8) == pytest.approx(100.0)
    # A cell that stopped early left 300 s of its 400 s: the next three share it.
    assert budget_share(100.0, 800.0, 1, [], 3) == pytest.approx(700.0 / 3)


def test_running_cells_keep_their_reservation_and_no_share_passes_the_deadline() -> None:
    # Two lanes, 600 s left: 1200 lane-seconds, one running cell holds 500 of them.
    assert budget_share(0.0, 600.0, 2, [500.0], 7) == pytest.approx(100.0)
    # The last cell may have the rest of its lane, but not beyond the deadline.
    assert budget_share(0.0, 600.0, 2, [100.0], 1) == pytest.approx(600.0)
    assert budget_share(700.0, 600.0, 2, [], 2) == 0.0


def _rows_by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["task"], r["model"]): r for r in rows}


TINY = {"steps": 6, "eval_every": 3, "batch_size": 16}


@pytest.mark.parametrize("jobs", [1, 2], ids=["in-process", "two-workers"])
def test_cells_train_and_a_broken_cell_is_reported_without_losing_the_others(
    tmp_path: Path, jobs: int
) -> None:
    work = tmp_path / "runs"
    work.mkdir()
    # A file where the shift cell's run directory should go: that cell cannot start training.
    (work / "induction_head-shift-seed0").write_text("in the way")
    events: list[dict[str, Any]] = []
    rows = reproduce_synthetic(
        tmp_path / "out",
        tasks=["induction_head"],
        models=["attention", "shift", "h3"],
        budget_minutes=5,
        device="cpu",
        work_dir=work,
        jobs=jobs,
        threads=1,
        train_overrides=TINY,
        on_event=events.append,
        log=lambda line: None,
    )
    by_key = _rows_by_key(rows)
    assert [r["model"] for r in rows] == ["attention", "shift", "h3"]  # the table's order
    for model in ("attention", "h3"):
        row = by_key[("induction_head", model)]
        assert row["status"] == "completed" and row["step"] == 6
        assert 0.0 <= row["test_accuracy"] <= 1.0
        assert (work / f"induction_head-{model}-seed0" / "metrics.json").exists()
        assert (tmp_path / "out" / "logs" / f"induction_head-{model}-seed0.json").exists()
    broken = by_key[("induction_head", "shift")]
    assert broken["status"] == "failed" and broken["test_accuracy"] is None
    assert "induction_head-shift-seed0" in broken["error"]

    kinds = {(e["model"], e["kind"]) for e in events}
    assert {("attention", "start"), ("attention", "eval"), ("attention", "done")} <= kinds
    assert ("shift", "failed") in kinds

    report = (tmp_path / "out" / "synthetic.md").read_text()
    assert "| Shift-only | — | — |" in report  # failed: no number, and none in the paper
    assert "| induction_head | Shift-only | 0 | failed (" in report
    assert f"{jobs} cell(s) at a time" in report
    data = json.loads((tmp_path / "out" / "synthetic.json").read_text())
    assert data["meta"]["jobs"] == jobs and data["meta"]["steps"] == {"induction_head": 6}
    assert (tmp_path / "out" / "synthetic.png").stat().st_size > 0


def test_a_spent_budget_stops_every_cell_at_once_and_still_writes_the_table(
    tmp_path: Path,
) -> None:
    rows = reproduce_synthetic(
        tmp_path / "out",
        tasks=["associative_recall"],
        models=["s4d"],
        budget_minutes=0,
        device="cpu",
        work_dir=tmp_path / "runs",
        jobs=1,
        train_overrides={"steps": 50, "eval_every": 10, "batch_size": 8},
        log=lambda line: None,
    )
    assert rows[0]["status"] == "stopped" and rows[0]["step"] < 50
    assert (tmp_path / "out" / "synthetic.md").exists()


def test_reproduce_from_the_command_line_with_a_step_cap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "docs"
    argv = ["reproduce", "synthetic", "--tasks", "associative_recall", "--models", "attention"]
    argv += ["--budget", "4", "--jobs", "1", "--device", "cpu", "--first-seed", "3"]
    argv += ["--out", str(out), "--work-dir", str(tmp_path / "runs")]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"report": str(out / "synthetic.md")}
    data = json.loads((out / "synthetic.json").read_text())
    assert [(r["model"], r["status"], r["step"]) for r in data["results"]] == [
        ("attention", "completed", 4)
    ]
    # The settings reported are the ones the cells ran with.
    assert data["meta"]["seeds"] == [3] and data["meta"]["steps"] == {"associative_recall": 4}
    assert data["meta"]["train"]["device"] == "cpu"
    log = json.loads((out / "logs" / "associative_recall-attention-seed3.json").read_text())
    assert log["config"]["task"]["seed"] == 3 and log["config"]["train"]["steps"] == 4
    assert "mean ± sd over 1 seed(s) (3)" in (out / "synthetic.md").read_text()


def test_cells_use_the_papers_tasks_and_safaris_settings() -> None:
    ar, ih = run_config("associative_recall", "h3"), run_config("induction_head", "attention")
    assert (ar.task.name, ar.task.vocab_size, ar.task.seq_len) == (
        "associative_recall_safari",
        10,
        20,
    )
    assert (ih.task.name, ih.task.vocab_size, ih.task.seq_len) == ("induction_head_safari", 20, 30)
    assert ar.task.num_val == 500 and ar.task.num_train == 5000
    assert (ar.model.d_model, ar.model.head_dim, ar.model.h3_ssm) == (32, 1, "head")
    assert ar.model.discretization == "bilinear" and ar.model.embed_dropout == 0.1
    assert ar.model.mlp_act == "gelu_tanh"
    assert (ar.train.lr, ar.train.weight_decay, ar.train.batch_size) == (5e-4, 0.1, 32)
    assert (ih.model.n_head, ih.model.pos_embed, ih.model.attn_rotary) == (1, "learned", False)
    assert ih.model.max_len == 31  # 30 tokens, "=>"
    assert run_config("induction_head", "gss").model.mixers == ("gss", "gss")


def test_the_reported_number_is_the_test_accuracy_at_the_validation_selected_step(
    tmp_path: Path,
) -> None:
    rows = reproduce_synthetic(
        tmp_path / "out",
        tasks=["induction_head"],
        models=["attention"],
        seeds=2,
        device="cpu",
        work_dir=tmp_path / "runs",
        jobs=1,
        train_overrides={"steps": 9, "eval_every": 3, "batch_size": 16, "early_stop_acc": None},
        log=lambda line: None,
    )
    assert [r["seed"] for r in rows] == [0, 1]
    for r in rows:
        log = json.loads(
            (
                tmp_path / "out" / "logs" / f"induction_head-attention-seed{r['seed']}.json"
            ).read_text()
        )
        evals = [h for h in log["history"] if h["kind"] == "eval"]
        best = max(evals, key=lambda h: (h["val_accuracy"], -h["val_loss"]))
        assert r["selected_step"] == best["step"]
        assert r["test_accuracy"] == best["test_accuracy"]
        assert r["val_accuracy"] == best["val_accuracy"]
    cell = aggregate(rows)[("induction_head", "attention")]
    accs = [100 * r["test_accuracy"] for r in rows]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(accs) / 2)
    assert cell["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)


def test_seeds_run_apart_merge_into_one_table_and_other_settings_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def run(first_seed: int, seeds: int, budget: str, out: str) -> None:
        argv = ["reproduce", "synthetic", "--tasks", "associative_recall", "--models", "h3"]
        argv += ["--budget", budget, "--jobs", "1", "--device", "cpu", "--eval-every", "2"]
        argv += ["--first-seed", str(first_seed), "--seeds", str(seeds)]
        argv += ["--out", str(tmp_path / out), "--work-dir", str(tmp_path / "runs" / out)]
        assert main(argv) == 0

    run(0, 1, "4", "seed0")
    run(1, 2, "4", "seeds12")
    run(3, 1, "6", "longer")
    together = tmp_path / "together"
    argv = ["reproduce", "synthetic", "--out", str(together), "--merge"]
    assert main([*argv, str(tmp_path / "seeds12"), str(tmp_path / "seed0")]) == 0
    data = json.loads((together / "synthetic.json").read_text())
    assert data["meta"]["seeds"] == [0, 1, 2]
    assert [r["seed"] for r in data["results"]] == [0, 1, 2]
    # Every row is the source run's, unchanged; the logs stay in the sources, which are named.
    sources = ((0, "seed0"), (1, "seeds12"), (2, "seeds12"))
    for row, (seed, src) in zip(data["results"], sources, strict=True):
        name = f"associative_recall-h3-seed{seed}.json"
        assert row == json.loads((tmp_path / src / "logs" / name).read_text())["row"]
    assert not (together / "logs").exists()
    assert str(tmp_path / "seeds12") in (together / "synthetic.md").read_text()
    accs = [100 * r["test_accuracy"] for r in data["results"]]
    cell = aggregate(data["results"])[("associative_recall", "h3")]
    assert cell["n"] == 3 and cell["mean"] == pytest.approx(sum(accs) / 3)
    assert "mean ± sd over 3 seed(s) (0, 1, 2)" in (together / "synthetic.md").read_text()
    capsys.readouterr()
    # A different budget is a different experiment; a seed twice would be counted twice.
    assert main([*argv, str(tmp_path / "seed0"), str(tmp_path / "longer")]) == 2
    assert "different steps" in capsys.readouterr().err
    assert main([*argv, str(tmp_path / "seed0"), str(tmp_path / "seed0")]) == 2
    assert "more than one source" in capsys.readouterr().err
