"""The demo bundle (h3lab.demobundle): built from a real run directory, read back with the same
weights, config and history, and refused when any file differs from its manifest."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from h3lab import __main__ as cli
from h3lab.analysis import AnalysisSpec, run_analysis
from h3lab.checkpoint import read_config
from h3lab.demobundle import (
    MANIFEST,
    MAX_TRAIN_ROWS,
    BundleError,
    build_bundle,
    downsample_history,
    sha256_file,
    verify_bundle,
)
from tests import factories

COMMITTED = Path(__file__).resolve().parents[2] / "experiments" / "demo_bundle"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished tiny run, as ``python -m h3lab train`` leaves it."""
    from h3lab.train import train

    out = tmp_path_factory.mktemp("run") / "ih-h3"
    result = train(factories.tiny_config(device="cpu", log_every=1), out, resume=False)
    assert result.status == "completed"
    return out


@pytest.fixture
def bundle(run_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    build_bundle([run_dir], out, command="pytest: train tiny_config", min_accuracy=0.0)
    return out


def test_a_built_bundle_reads_back_the_runs_weights_config_and_evaluations(
    run_dir: Path, bundle: Path
) -> None:
    (model,) = verify_bundle(bundle)
    assert model.name == "ih-h3"
    ckpt = run_dir / "checkpoint"
    ours, theirs = load_file(str(model.weights)), load_file(str(ckpt / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.config == read_config(ckpt)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    evals = [r for r in metrics["history"] if r["kind"] == "eval"]
    assert [r for r in model.history if r["kind"] == "eval"] == evals
    prov = model.provenance
    digest = sha256_file(model.weights)
    assert prov["weights_sha256"] == digest == model.digests["model.safetensors"]
    assert prov["command"] == "pytest: train tiny_config"
    assert prov["seed"] == model.config.train.seed
    assert prov["steps"] == metrics["final"]["step"]
    assert len(prov["h3lab_commit"]) >= 7
    # The recorded accuracy is an evaluation of the bundled files, as the platform runs it,
    # and the final evaluation training itself recorded.
    again = run_analysis(AnalysisSpec(kind="evaluate"), model.folder, bundle.parent / "eval")
    assert model.test_accuracy == again["accuracy"]
    assert model.test_accuracy == pytest.approx(evals[-1]["test_accuracy"])
    assert not (model.folder / "optimizer.safetensors").exists()


def _flip_a_weight_byte(b: Path) -> None:
    path = b / "ih-h3" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_the_provenance(b: Path) -> None:
    path = b / "ih-h3" / "provenance.json"
    prov = json.loads(path.read_text())
    prov["command"] = "python -m h3lab train --steps 100000"
    path.write_text(json.dumps(prov))


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        (_flip_a_weight_byte, "ih-h3/model.safetensors does not match its SHA-256"),
        (_edit_the_provenance, "ih-h3/provenance.json does not match its SHA-256"),
        (lambda b: (b / "ih-h3" / "metrics.jsonl").unlink(), "ih-h3/metrics.jsonl is missing"),
        (lambda b: (b / "ih-h3" / "extra.bin").write_bytes(b"x"), "files the manifest does"),
        (lambda b: (b / MANIFEST).write_text("{}"), "is not a h3lab.demo-bundle/1 manifest"),
    ],
    ids=["weights", "provenance", "missing-file", "extra-file", "manifest"],
)
def test_a_tampered_bundle_is_refused_with_the_file_that_differs(
    bundle: Path, tamper: Callable[[Path], object], says: str
) -> None:
    tamper(bundle)
    with pytest.raises(BundleError, match="refused") as refused:
        verify_bundle(bundle)
    assert says in str(refused.value)


def test_a_run_that_has_not_finished_is_not_bundled(run_dir: Path, tmp_path: Path) -> None:
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / "metrics.json").unlink()
    with pytest.raises(BundleError, match="has not finished"):
        build_bundle([unfinished], tmp_path / "b", command="c", min_accuracy=0.0)
    assert not (tmp_path / "b").exists()


def test_a_model_below_the_minimum_accuracy_is_refused_and_the_old_bundle_kept(
    run_dir: Path, bundle: Path
) -> None:
    before = (bundle / MANIFEST).read_bytes()
    with pytest.raises(BundleError, match=r"below the minimum 1\.01"):
        build_bundle([run_dir], bundle, command="c", min_accuracy=1.01)
    assert (bundle / MANIFEST).read_bytes() == before
    assert [p.name for p in bundle.parent.iterdir() if p.name.startswith(".bundle")] == []


def test_the_history_keeps_every_evaluation_and_at_most_the_row_budget_of_training() -> None:
    history = [{"kind": "train", "step": s} for s in range(1, 1001)]
    history += [{"kind": "eval", "step": s} for s in range(100, 1001, 100)]
    kept = downsample_history(history, MAX_TRAIN_ROWS)
    train = [r for r in kept if r["kind"] == "train"]
    assert len(train) <= MAX_TRAIN_ROWS + 1 and train[-1]["step"] == 1000
    assert [r for r in kept if r["kind"] == "eval"] == history[1000:]


def test_the_cli_builds_a_bundle(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli-bundle"
    argv = ["demo-bundle", str(run_dir), "--out", str(out), "--command", "c"]
    assert cli.main([*argv, "--min-accuracy", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["models"] == ["ih-h3"]
    assert [m.name for m in verify_bundle(out)] == ["ih-h3"]
    assert cli.main([*argv, "--min-accuracy", "1.01"]) == 2
    assert "below the minimum" in capsys.readouterr().err


def test_the_committed_demo_bundle_verifies_and_fits_in_two_megabytes() -> None:
    models = verify_bundle(COMMITTED)
    assert {(m.config.task.name, m.config.preset) for m in models} >= {
        ("induction_head_safari", "h3"),
        ("associative_recall_safari", "h3"),
        ("associative_recall_safari", "attention"),
    }
    # The demo shows models that have learned their task (tests/test_demo.py checks that a
    # real forward pass of the imported run gives exactly the recorded accuracy).
    for m in models:
        assert m.provenance["evaluation"]["accuracy"] >= 0.95, m.name
    size = sum(p.stat().st_size for p in COMMITTED.rglob("*") if p.is_file())
    assert size <= 2 * 1024 * 1024
