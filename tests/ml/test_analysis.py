"""h3lab.analysis without Django: spec validation, and the torch-free lists it spells out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from h3lab import analysis
from h3lab.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_the_spelled_out_lists_match_the_modules_that_run_them() -> None:
    from h3lab import interventions, probes

    assert analysis.INTERVENTION_KINDS == interventions.INTERVENTION_KINDS
    assert analysis.ABLATION_MODES == interventions.ABLATION_MODES
    assert analysis.PROBE_KINDS == probes.PROBE_KINDS


def test_validating_a_spec_does_not_import_torch() -> None:
    code = (
        "import sys; from h3lab.analysis import AnalysisSpec; "
        "AnalysisSpec.from_dict({'kind': 'ablation'}); "
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_a_spec_keeps_only_the_options_its_kind_uses() -> None:
    spec = analysis.AnalysisSpec.from_dict(
        {"kind": "steering", "examples": 32, "coefficients": [0, 2], "probe": "recall"}
    )
    assert spec.to_dict() == {
        "kind": "steering",
        "seed": 0,
        "examples": 32,
        "hook": "",
        "coefficients": [0.0, 2.0],
    }
    assert analysis.AnalysisSpec.from_dict({"kind": "evaluate"}).to_dict() == {
        "kind": "evaluate",
        "seed": 0,
    }


def test_a_bad_spec_names_every_bad_field() -> None:
    with pytest.raises(ConfigError) as excinfo:
        analysis.AnalysisSpec.from_dict(
            {
                "kind": "dissect",
                "probe": "x",
                "examples": 1,
                "seed": -1,
                "modes": [],
                "coefficients": [float("nan")],
                "corruption": "tokens",
                "extra": 1,
            }
        )
    assert set(excinfo.value.errors) == {
        "analysis",
        "kind",
        "probe",
        "examples",
        "seed",
        "modes",
        "coefficients",
        "corruption",
    }
    with pytest.raises(ConfigError):
        analysis.AnalysisSpec.from_dict({"kind": "ablation", "examples": True})


def _saved_model(tmp_path: Path, preset: str, n_layer: int) -> Path:
    """A fresh (untrained) model's two files, as a finished run keeps them."""
    import torch
    from safetensors.torch import save_model

    from h3lab.config import RunConfig, TaskConfig, TrainConfig
    from h3lab.nn.lm import LanguageModel

    cfg = RunConfig.build(
        preset=preset,
        n_layer=n_layer,
        d_model=16,
        d_state=8,
        task=TaskConfig("induction_head", vocab_size=8, seq_len=12, num_train=64, num_test=48),
        train=TrainConfig(steps=1, batch_size=8),
    )
    folder = tmp_path / f"{preset}-{n_layer}"
    folder.mkdir()
    save_model(LanguageModel(cfg.model, generator=torch.Generator().manual_seed(0)),
               str(folder / analysis.MODEL_FILE))  # fmt: skip
    (folder / analysis.CONFIG_FILE).write_text(json.dumps(cfg.to_dict()), encoding="utf-8")
    return folder


@pytest.mark.parametrize("preset", ["attention", "h3"])
def test_the_mechanism_analysis_writes_one_models_tests(tmp_path: Path, preset: str) -> None:
    source = _saved_model(tmp_path, preset, 2)
    spec = analysis.AnalysisSpec.from_dict({"kind": "mechanism", "examples": 16})
    summary = analysis.run_analysis(spec, source, tmp_path / "out")
    assert summary["analysis"] == {"kind": "mechanism", "seed": 0, "examples": 16}
    files = set(summary["files"])
    assert {"mechanism.json", "mechanism.png", "mechanism.svg", "analysis.json"} <= files
    assert all((tmp_path / "out" / f).is_file() for f in files)
    (cell,) = json.loads((tmp_path / "out" / "mechanism.json").read_text())["cells"].values()
    roles = {t["role"] for t in cell["tests"]}
    assert "previous token" in roles and cell["examples"] == 16
    assert summary["found"] == [t["component"] for t in cell["tests"] if t["found"]]


@pytest.mark.parametrize(("preset", "n_layer"), [("h3", 1), ("hybrid", 2)])
def test_the_mechanism_analysis_refuses_models_it_cannot_test(
    tmp_path: Path, preset: str, n_layer: int
) -> None:
    source = _saved_model(tmp_path, preset, n_layer)
    spec = analysis.AnalysisSpec.from_dict({"kind": "mechanism", "examples": 16})
    with pytest.raises(ValueError, match="two or more layers, every layer the same kind"):
        analysis.run_analysis(spec, source, tmp_path / "out")


def test_patching_on_the_key_corruption_says_so(tmp_path: Path) -> None:
    source = _saved_model(tmp_path, "h3", 2)
    spec = analysis.AnalysisSpec.from_dict(
        {"kind": "patching", "examples": 16, "corruption": "keys"}
    )
    assert spec.to_dict()["corruption"] == "keys"
    analysis.run_analysis(spec, source, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "patching.json").read_text())
    assert data["corruption"] == "keys"
