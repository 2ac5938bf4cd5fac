"""Run configuration: what a training job needs, as frozen dataclasses with JSON round-trip.

A run's config is stored as JSON by the platform (``Run.config``) and validated here, so the
web form, the API, the CLI and the worker all agree on what a valid run is. Pure Python: no
Django, no torch import at module load. The task section, :class:`TaskConfig`, belongs to the
data package (:mod:`h3lab.data.config`) and is re-exported here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from h3lab.data.config import TASKS, TaskConfig
from h3lab.nn.config import PRESETS, InvalidModelConfig, LMConfig, preset_mixers

__all__ = ["PRESETS", "TASKS", "ConfigError", "RunConfig", "TaskConfig", "TrainConfig"]


class ConfigError(ValueError):
    """A config failed validation; ``errors`` maps dotted field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. SSM parameters (step sizes, A, C of the diagonal SSM) get ``ssm_lr`` and
    no weight decay, as in the H3 paper. ``early_stop_acc``: stop once validation accuracy (test
    accuracy for configs without a validation split) has been at or above it for
    ``early_stop_patience`` consecutive evaluations. The learning rate warms up linearly
    for ``warmup_steps`` then follows a cosine down to ``min_lr_ratio`` × peak.
    ``log_every``: steps averaged into one training-loss row of the run's history. ``amp``:
    bf16 autocast on CUDA (CPU always runs in float32). ``processes``: data-parallel ranks
    (torch.distributed, one per GPU on CUDA, gloo on CPU); ``batch_size`` is the *global*
    batch, split evenly across them, so a run's trajectory does not depend on it."""

    steps: int = 1000
    batch_size: int = 32
    lr: float = 5e-4
    ssm_lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float = 1.0
    eval_every: int = 100
    checkpoint_every: int = 200
    seed: int = 0
    device: str = "auto"
    early_stop_acc: float | None = None
    early_stop_patience: int = 2
    log_every: int = 10
    min_lr_ratio: float = 0.1
    amp: bool = True
    processes: int = 1

    def errors(self) -> dict[str, str]:
        e: dict[str, str] = {}
        if not 1 <= self.steps <= 1_000_000:
            e["steps"] = "must be between 1 and 1,000,000"
        if not 1 <= self.batch_size <= 4096:
            e["batch_size"] = "must be between 1 and 4096"
        if not 0 < self.lr <= 1:
            e["lr"] = "must be in (0, 1]"
        if not 0 < self.ssm_lr <= 1:
            e["ssm_lr"] = "must be in (0, 1]"
        if self.weight_decay < 0:
            e["weight_decay"] = "must be ≥ 0"
        if self.warmup_steps < 0:
            e["warmup_steps"] = "must be ≥ 0"
        if self.grad_clip < 0:
            e["grad_clip"] = "must be ≥ 0 (0 disables clipping)"
        if self.eval_every < 1:
            e["eval_every"] = "must be positive"
        if self.checkpoint_every < 1:
            e["checkpoint_every"] = "must be positive"
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            e["device"] = "must be auto, cpu or cuda[:N]"
        if self.early_stop_acc is not None and not 0 < self.early_stop_acc <= 1:
            e["early_stop_acc"] = "must be in (0, 1]"
        if self.early_stop_patience < 1:
            e["early_stop_patience"] = "must be positive"
        if self.log_every < 1:
            e["log_every"] = "must be positive"
        if not 0 <= self.min_lr_ratio <= 1:
            e["min_lr_ratio"] = "must be in [0, 1]"
        if not 1 <= self.processes <= 64:
            e["processes"] = "must be between 1 and 64"
        elif self.batch_size % self.processes:
            e["processes"] = "must divide batch_size (the global batch is split evenly)"
        elif self.processes > 1 and self.device.startswith("cuda:"):
            e["processes"] = "needs device auto, cpu or cuda (rank r takes cuda:r)"
        return e


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs. ``preset`` names the architecture (see
    :func:`h3lab.nn.config.preset_mixers`); ``model`` is the resolved model config."""

    model: LMConfig
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preset: str = "h3"

    @classmethod
    def build(
        cls,
        *,
        preset: str = "h3",
        n_layer: int = 2,
        d_model: int = 64,
        task: TaskConfig | None = None,
        train: TrainConfig | None = None,
        **model_kw: Any,
    ) -> RunConfig:
        """Resolve a preset and a task into a validated run config (raises ConfigError)."""
        task = task or TaskConfig()
        errors: dict[str, str] = {f"task.{k}": v for k, v in task.errors().items()}
        if preset not in PRESETS:
            errors["preset"] = f"unknown model {preset!r}; choose from {', '.join(PRESETS)}"
        if not 1 <= n_layer <= 64:
            errors["model.n_layer"] = "must be between 1 and 64"
        if errors:
            raise ConfigError(errors)
        model = _model(
            mixers=preset_mixers(preset, n_layer),
            vocab_size=task.model_vocab_size,
            d_model=d_model,
            **model_kw,
        )
        return cls.validated(model=model, task=task, train=train or TrainConfig(), preset=preset)

    @classmethod
    def validated(
        cls, *, model: LMConfig, task: TaskConfig, train: TrainConfig, preset: str
    ) -> RunConfig:
        errors = {f"task.{k}": v for k, v in task.errors().items()}
        errors.update({f"train.{k}": v for k, v in train.errors().items()})
        # from_dict reaches here without build()'s preset check; an unknown preset would
        # otherwise be stored and only fail when a reproduction or the UI looks it up.
        if preset not in PRESETS:
            errors["preset"] = f"unknown model {preset!r}; choose from {', '.join(PRESETS)}"
        if model.vocab_size < task.model_vocab_size:
            errors["model.vocab_size"] = (
                f"must be ≥ the task's vocabulary ({task.model_vocab_size})"
            )
        if errors:
            raise ConfigError(errors)
        return cls(model=model, task=task, train=train, preset=preset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "model": self.model.to_dict(),
            "task": dataclasses.asdict(self.task),
            "train": dataclasses.asdict(self.train),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunConfig:
        """Parse and validate; raises ConfigError naming every bad field."""
        if not isinstance(d, dict):
            raise ConfigError({"config": "must be a JSON object"})
        errors: dict[str, str] = {}
        task_d = d.get("task", {})
        if isinstance(task_d, dict) and "num_val" not in task_d:
            # Stored before the validation split existed: no validation split, as trained.
            task_d = {**task_d, "num_val": 0}
        task = _section(TaskConfig, task_d, "task", errors)
        train = _section(TrainConfig, d.get("train", {}), "train", errors)
        preset = d.get("preset", "h3")
        model: LMConfig | None = None
        if "model" not in d:
            # A config may name only the architecture: resolve the preset as build() does.
            if not isinstance(preset, str) or preset not in PRESETS:
                errors["preset"] = f"unknown model {preset!r}; choose from {', '.join(PRESETS)}"
            elif task is not None:
                try:
                    model = LMConfig(
                        mixers=preset_mixers(preset, 2), vocab_size=task.model_vocab_size
                    )
                except InvalidModelConfig as exc:
                    errors.update({f"model.{k}": v for k, v in exc.errors.items()})
        else:
            try:
                model = LMConfig.from_dict(d["model"])
            except InvalidModelConfig as exc:
                errors.update({f"model.{k}": v for k, v in exc.errors.items()})
            except (TypeError, ValueError, AttributeError) as exc:
                errors["model"] = str(exc)
        unknown = set(d) - {"preset", "model", "task", "train"}
        if unknown:
            errors["config"] = f"unknown section(s): {', '.join(sorted(unknown))}"
        if errors or task is None or train is None or model is None:
            raise ConfigError(errors or {"config": "invalid"})
        return cls.validated(model=model, task=task, train=train, preset=str(d.get("preset", "h3")))


def _model(**kw: Any) -> LMConfig:
    try:
        return LMConfig(**kw)
    except InvalidModelConfig as exc:
        raise ConfigError({f"model.{k}": v for k, v in exc.errors.items()}) from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError({"model": str(exc)}) from exc


def _section(klass: Any, data: Any, prefix: str, errors: dict[str, str]) -> Any:
    if not isinstance(data, dict):
        errors[prefix] = "must be a JSON object"
        return None
    names = {f.name for f in dataclasses.fields(klass)}
    unknown = set(data) - names
    if unknown:
        errors[prefix] = f"unknown field(s): {', '.join(sorted(unknown))}"
        return None
    bad = {
        f"{prefix}.{f.name}": _type_error(f.type, data[f.name])
        for f in dataclasses.fields(klass)
        if f.name in data and _type_error(f.type, data[f.name])
    }
    if bad:
        # Check types before construction: errors() compares values, and a string where a
        # number belongs would otherwise escape as a TypeError instead of a ConfigError.
        errors.update(bad)
        return None
    try:
        return klass(**data)
    except TypeError as exc:
        errors[prefix] = str(exc)
        return None


def _type_error(annotation: Any, value: Any) -> str:
    """A message if ``value`` (from JSON) does not fit the field annotation, else ''."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None:
        return "" if "None" in kinds else "must not be null"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if "int" in kinds and is_int:
        return ""
    if "float" in kinds and (is_int or isinstance(value, float)):
        return ""
    if "str" in kinds and isinstance(value, str):
        return ""
    if "bool" in kinds and isinstance(value, bool):
        return ""
    names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
    return "must be " + " or ".join(names.get(k, k) for k in kinds if k != "None")
