"""The command line documents itself, runs end to end, and the ML core never imports Django."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from h3lab.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "command",
    [
        "train",
        "eval",
        "generate",
        "probe",
        "intervene",
        "study",
        "reproduce",
        "export",
        "import-h3",
        "demo-bundle",
    ],
)
def test_every_subcommand_has_help_with_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_bench_help_is_delegated_to_the_bench_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "h3lab", "bench", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_train_eval_generate_and_probe_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["--task", "induction_head", "--vocab-size", "8", "--seq-len", "8", "--d-model", "16"]
    assert main(["train", *args, "--steps", "3", "--batch-size", "4", "--out", str(run)]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "completed"
    assert main(["eval", "--checkpoint", str(run)]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0
    assert (
        main(["generate", "--checkpoint", str(run), "--prompt", "1 2 7", "--max-new-tokens", "3"])
        == 0
    )
    assert len(capsys.readouterr().out.split()) == 6
    assert (
        main(["probe", "--checkpoint", str(run), "--kind", "kernels", "--out", str(tmp_path / "p")])
        == 0
    )
    assert (tmp_path / "p" / "kernels.svg").exists()


def test_interventions_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    args = ["--task", "associative_recall", "--vocab-size", "10", "--seq-len", "9"]
    assert main(["train", *args, "--d-model", "16", "--steps", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    for kind, extra in (
        ("ablation", ["--modes", "zero", "resample"]),
        ("patching", []),
        ("steering", ["--coefficients", "0", "4"]),
    ):
        out = tmp_path / "iv"
        cmd = ["intervene", "--checkpoint", str(run), "--kind", kind, "--out", str(out)]
        assert main([*cmd, "--examples", "32", *extra]) == 0, kind
        assert json.loads(capsys.readouterr().out)["files"] == [
            f"{kind}.png",
            f"{kind}.svg",
            f"{kind}.json",
        ]
        report = json.loads((out / f"{kind}.json").read_text())
        assert report["n_examples"] == 32 and len(report["inputs_sha256"]) == 64
    bad = ["intervene", "--checkpoint", str(run), "--kind", "ablation", "--out", str(tmp_path)]
    assert main([*bad, "--examples", "1"]) == 2
    assert "examples must be between" in capsys.readouterr().err


def test_a_bad_value_is_reported_without_a_traceback(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["train", "--steps", "0", "--out", str(tmp_path)]) == 2
    assert "train.steps" in capsys.readouterr().err


def test_the_ml_core_does_not_import_django() -> None:
    code = (
        "import sys, h3lab.train, h3lab.data.datasets, h3lab.probes, h3lab.nn, h3lab.nn.lm;"
        "import h3lab.reproduce;"
        "import h3lab.__main__;"
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
