"""Analyses of a finished run's checkpoint as platform jobs: evaluation, probes, ablation,
activation patching, steering and the mechanism study's tests of one model. Pure: no Django.

The platform stores a finished training run's weights and config as two files
(``model.safetensors`` and ``config.json``); :func:`run_analysis` reads them from a folder,
runs one analysis described by an :class:`AnalysisSpec` and writes its outputs (PNG, SVG,
JSON, as the CLI's ``probe`` and ``intervene`` do) plus ``analysis.json``, a summary naming the
spec and every file. :func:`analysis_job` adapts it to :func:`h3lab.isolation.train_isolated`,
so an analysis runs in the same memory-capped child as training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from h3lab.config import ConfigError, RunConfig

if TYPE_CHECKING:
    from h3lab.interventions import AblationMode
    from h3lab.nn.lm import LanguageModel
    from h3lab.train import Callbacks, TrainResult

# Spelled out rather than imported: the web process validates specs without loading torch
# (which h3lab.interventions and h3lab.probes import). tests/ml/test_analysis.py checks that
# they match those modules' lists.
INTERVENTION_KINDS: tuple[str, ...] = ("ablation", "patching", "steering")
ABLATION_MODES: tuple[AblationMode, ...] = ("zero", "mean", "resample")
PROBE_KINDS: tuple[str, ...] = ("induction", "attention", "kernels", "recall")
CORRUPTIONS: tuple[str, ...] = ("values", "keys")
ANALYSIS_KINDS: tuple[str, ...] = ("evaluate", "probe", *INTERVENTION_KINDS, "mechanism")
# Kinds that draw ``examples`` test examples.
EXAMPLE_KINDS: tuple[str, ...] = (*INTERVENTION_KINDS, "mechanism")
SUMMARY_FILE = "analysis.json"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_EXAMPLES = 4096
MAX_COEFFICIENTS = 16


@dataclass(frozen=True)
class AnalysisSpec:
    """One analysis: ``kind`` (:data:`ANALYSIS_KINDS`); for probes the ``probe`` kind; for
    interventions and the mechanism tests ``examples`` test examples drawn with ``seed``;
    ablation ``modes``; patching's ``corruption`` (``values``: the token after each earlier
    occurrence of the query replaced; ``keys``: the query swapped with another key); steering
    ``hook`` (default: residual after the middle layer) and ``coefficients``."""

    kind: str
    probe: str = "induction"
    examples: int = 64
    seed: int = 0
    modes: tuple[AblationMode, ...] = ABLATION_MODES
    hook: str = ""
    coefficients: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0)
    corruption: str = "values"

    @classmethod
    def from_dict(cls, d: Any) -> AnalysisSpec:
        """Parse and validate; raises ConfigError naming every bad field."""
        if not isinstance(d, dict):
            raise ConfigError({"analysis": "must be a JSON object"})
        errors: dict[str, str] = {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            errors["analysis"] = f"unknown field(s): {', '.join(sorted(unknown))}"
        kind = d.get("kind")
        if kind not in ANALYSIS_KINDS:
            errors["kind"] = f"unknown analysis {kind!r}; choose from {', '.join(ANALYSIS_KINDS)}"
        probe = d.get("probe", cls.probe)
        if probe not in PROBE_KINDS:
            errors["probe"] = f"unknown probe {probe!r}; choose from {', '.join(PROBE_KINDS)}"
        examples = d.get("examples", cls.examples)
        if type(examples) is not int or not 2 <= examples <= MAX_EXAMPLES:
            errors["examples"] = f"must be a whole number from 2 to {MAX_EXAMPLES:,}"
        seed = d.get("seed", cls.seed)
        if type(seed) is not int or not 0 <= seed < 2**31:
            errors["seed"] = "must be a whole number from 0 to 2³¹−1"
        modes = d.get("modes", list(cls.modes))
        if (
            not isinstance(modes, list | tuple)
            or not modes
            or any(m not in ABLATION_MODES for m in modes)
        ):
            errors["modes"] = f"choose one or more of {', '.join(ABLATION_MODES)}"
        hook = d.get("hook", "")
        if not isinstance(hook, str) or len(hook) > 100:
            errors["hook"] = "must be a hook name (at most 100 characters)"
        coefficients = d.get("coefficients", list(cls.coefficients))
        if (
            not isinstance(coefficients, list | tuple)
            or not 1 <= len(coefficients) <= MAX_COEFFICIENTS
            or any(
                type(c) not in (int, float) or not math.isfinite(c) or abs(c) > 1e4
                for c in coefficients
            )
        ):
            errors["coefficients"] = (
                f"give 1 to {MAX_COEFFICIENTS} finite numbers of magnitude at most 10,000"
            )
        corruption = d.get("corruption", cls.corruption)
        if corruption not in CORRUPTIONS:
            errors["corruption"] = f"choose one of {', '.join(CORRUPTIONS)}"
        if errors:
            raise ConfigError(errors)
        return cls(
            kind=str(kind),
            probe=probe,
            examples=examples,
            seed=seed,
            modes=tuple(modes),
            hook=hook,
            coefficients=tuple(float(c) for c in coefficients),
            corruption=str(corruption),
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields this kind uses (what the run's ``config["analysis"]`` stores)."""
        d: dict[str, Any] = {"kind": self.kind, "seed": self.seed}
        if self.kind == "probe":
            d["probe"] = self.probe
        if self.kind in EXAMPLE_KINDS:
            d["examples"] = self.examples
        if self.kind == "ablation":
            d["modes"] = list(self.modes)
        if self.kind == "patching":
            d["corruption"] = self.corruption
        if self.kind == "steering":
            d.update(hook=self.hook, coefficients=list(self.coefficients))
        return d


def load_model_files(folder: Path) -> tuple[LanguageModel, RunConfig]:
    """The model (CPU, eval mode) and config from ``folder``'s ``model.safetensors`` and
    ``config.json``: what a finished run keeps. Never unpickles."""
    from safetensors.torch import load_model

    from h3lab.nn.lm import LanguageModel

    cfg = RunConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
    model = LanguageModel(cfg.model)
    load_model(model, str(folder / MODEL_FILE), strict=True)
    return model.eval(), cfg


def run_analysis(
    spec: AnalysisSpec,
    source: Path,
    out_dir: Path,
    *,
    device: str = "cpu",
    on_phase: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` on the checkpoint in ``source`` and write its outputs to ``out_dir``;
    returns (and writes as ``analysis.json``) the summary: spec, headline numbers, files.
    ``on_phase(done, total)`` is called when the model is loaded and when the analysis ends."""
    from h3lab.train import resolve_device

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total = 2
    model, cfg = load_model_files(Path(source))
    dev = resolve_device(device)
    if on_phase is not None:
        on_phase(1, total)
    summary: dict[str, Any] = {"analysis": spec.to_dict(), "task": cfg.task.name}
    if spec.kind == "evaluate":
        summary.update(_evaluate(model, cfg, out_dir, dev))
    elif spec.kind == "probe":
        from h3lab.probes import run_probe

        data = run_probe(spec.probe, model, cfg, out_dir, seed=spec.seed, device=dev)
        summary["files"] = list(data["files"])
    elif spec.kind == "mechanism":
        summary.update(_mechanism(model, cfg, out_dir, spec, dev))
    else:
        from h3lab.interventions import InterventionSpec, run_intervention

        ispec = InterventionSpec(
            kind=spec.kind,
            examples=spec.examples,
            seed=spec.seed,
            modes=spec.modes,
            hook=spec.hook or None,
            coefficients=spec.coefficients,
            corruption=spec.corruption,
        )
        data = run_intervention(ispec, model, cfg, out_dir, device=dev)
        summary["files"] = list(data["files"])
        if "baseline" in data:
            summary["accuracy"] = data["baseline"]["accuracy"]
    summary["files"] = [*summary["files"], SUMMARY_FILE]
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if on_phase is not None:
        on_phase(total, total)
    return summary


def _mechanism(
    model: LanguageModel, cfg: RunConfig, out_dir: Path, spec: AnalysisSpec, device: Any
) -> dict[str, Any]:
    """The mechanism study's tests of this one model (:func:`h3lab.mechanism.analyse`): each
    layer's previous-token and match-and-copy (or shift and diagonal SSM) components ablated
    and patched, written as ``mechanism.json`` and a plot (PNG, SVG)."""
    from h3lab import mechanism
    from h3lab.curves import json_safe

    cell = mechanism.analyse(model.to(device), cfg, examples=spec.examples, seed=spec.seed)
    name = f"{cfg.task.name}-{cfg.preset}"
    fig = mechanism.plot_cell(name, cell)
    fig.savefig(out_dir / "mechanism.png", dpi=110)
    fig.savefig(out_dir / "mechanism.svg")
    data = json_safe({"cells": {name: cell}})
    (out_dir / "mechanism.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return {
        "accuracy": cell["accuracy"],
        "found": [t["component"] for t in cell["tests"] if t["found"]],
        "files": ["mechanism.json", "mechanism.png", "mechanism.svg"],
    }


def _evaluate(model: LanguageModel, cfg: RunConfig, out_dir: Path, device: Any) -> dict[str, Any]:
    """Test loss and final-token accuracy on the run's test split."""
    from h3lab.data.datasets import make_datasets
    from h3lab.train import evaluate

    test = make_datasets(cfg.task)[1]
    model.to(device)
    r = evaluate(model, test, batch_size=cfg.train.batch_size, device=device)
    data = {"loss": r.loss, "accuracy": r.accuracy, "examples": len(test)}
    (out_dir / "evaluation.json").write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return {**data, "files": ["evaluation.json"]}


def analysis_job(
    spec: dict[str, Any],
    source: str,
    cfg: RunConfig,
    out_dir: Path,
    callbacks: Callbacks,
    *,
    resume: bool = True,
) -> TrainResult:
    """:func:`run_analysis` with :func:`h3lab.train.train`'s signature, for
    :func:`h3lab.isolation.train_isolated` (bind ``spec`` and ``source`` with
    ``functools.partial``). Progress is reported as steps (phases) of the analysis; an
    analysis asked to stop before it begins returns "stopped" (it has nothing to resume: a
    requeued analysis starts again)."""
    from h3lab.train import Progress, TrainResult

    start = time.monotonic()
    nan = math.nan

    def result(status: Any, step: int, summary: dict[str, Any]) -> TrainResult:
        return TrainResult(
            status=status,
            step=step,
            train_loss=nan,
            test_loss=float(summary.get("loss", nan)),
            test_accuracy=float(summary.get("accuracy", nan)),
            best_test_accuracy=nan,
            elapsed_s=time.monotonic() - start,
            device=cfg.train.device,
            checkpoint_dir=Path(source),
            history=[summary] if summary else [],
        )

    if callbacks.should_stop is not None and callbacks.should_stop():
        return result("stopped", 0, {})

    def on_phase(done: int, total: int) -> None:
        if callbacks.on_progress is not None:
            elapsed = time.monotonic() - start
            callbacks.on_progress(
                Progress(
                    step=done,
                    total_steps=total,
                    loss=nan,
                    accuracy=None,
                    tokens_per_s=0.0,
                    eta_s=None,
                    lr=0.0,
                    elapsed_s=elapsed,
                )
            )

    summary = run_analysis(
        AnalysisSpec.from_dict(spec),
        Path(source),
        out_dir,
        device=cfg.train.device,
        on_phase=on_phase,
    )
    return result("completed", 2, summary)


__all__ = [
    "ANALYSIS_KINDS",
    "AnalysisSpec",
    "analysis_job",
    "load_model_files",
    "run_analysis",
]
