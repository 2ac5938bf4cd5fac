"""h3lab.analysis without Django: spec validation, and the torch-free lists it spells out."""

from __future__ import annotations

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
    }
    with pytest.raises(ConfigError):
        analysis.AnalysisSpec.from_dict({"kind": "ablation", "examples": True})
