"""Run configs from what a researcher submits: one assembly and one set of limits for the web
form and the API alike.

Both describe a run as *overrides* of a *base* config (the run being repeated, or nothing),
optionally with a depth and width from which the model is built for the config's preset
(:meth:`h3lab.config.RunConfig.build`). :func:`build_run_config` merges them, builds the model,
checks the task's corpus file and the platform's limits, and validates the result; every
problem comes back in one :class:`~h3lab.config.ConfigError` keyed by dotted field names
(``train.steps``, ``task.path``), which the form maps onto its fields and the API onto
``config.<key>`` field errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings

from experiments.inputs import MAX_SEED
from experiments.models import Project
from h3lab.config import ConfigError, RunConfig, TaskConfig, TrainConfig
from h3lab.estimate import Estimate, estimate

# The platform's limits on what one run may ask of a worker (h3lab.config checks only what makes
# a config meaningful). The form shows them as its fields' bounds.
MAX_LAYERS = 64
MAX_D_MODEL = 16384
MAX_VOCAB = 1_000_000

DEFAULT_N_LAYER = 2
DEFAULT_D_MODEL = 64


def corpus_dir(project: Project) -> Path:
    """Where a project's uploaded text corpora live (one flat folder per project)."""
    return Path(settings.MEDIA_ROOT) / "corpora" / project.slug


def project_corpora(project: Project) -> list[str]:
    """File names of the project's uploaded corpora, newest first."""
    folder = corpus_dir(project)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    return [p.name for p in sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)]


def build_run_config(
    project: Project,
    overrides: dict[str, Any],
    *,
    base: dict[str, Any] | None = None,
    n_layer: int | None = None,
    d_model: int | None = None,
    pending_corpus: Path | None = None,
) -> RunConfig:
    """The validated config of a run of ``project``: ``overrides`` merged section by section
    into ``base``. Raises :class:`ConfigError` naming every bad field.

    The model is built from the preset at ``n_layer`` × ``d_model`` (keeping the base model's
    other settings) when either is given, or when neither config has a ``model`` section (then
    at the default 2 × 64); a ``model`` section in ``overrides`` is used as given. Either way the
    depth, width and vocabulary are held to :data:`MAX_LAYERS`, :data:`MAX_D_MODEL` and
    :data:`MAX_VOCAB`, and seeds to 0 ≤ seed < 2**63 (what a torch generator takes).

    ``pending_corpus``: a file the caller is about to write into the project's corpus folder
    (the web form saves an upload only once the config validates); it counts as uploaded.
    """
    config = _merge(base or {}, overrides)
    if not (base and "preset" in base):  # not a rerun of a stored run's config
        # A new run gets the validation split (selection and early stop on it, never on
        # test). A config stored without ``num_val`` reads as one from before the split
        # existed (h3lab.config), so only a rerun of such a run keeps selecting on test.
        task = config.get("task", {})
        if isinstance(task, dict):
            config["task"] = {"num_val": TaskConfig.num_val, **task}
    mixers = _section(overrides, "model").get("mixers")
    if n_layer is not None and isinstance(mixers, list | tuple) and len(mixers) != n_layer:
        # Without this the given depth would be silently ignored for the model section's.
        raise ConfigError({"model.mixers": f"has {len(mixers):,} layers but n_layer is {n_layer}"})
    rebuild = "model" not in overrides and (
        n_layer is not None or d_model is not None or "model" not in config
    )
    depth = n_layer if n_layer is not None else DEFAULT_N_LAYER
    width = d_model if d_model is not None else DEFAULT_D_MODEL
    errors = (
        _limit_errors(config, n_layer=depth, d_model=width)
        if rebuild
        else _limit_errors(config, n_layer=None, d_model=None)
    )
    config, corpus_errors = _checked_corpus(project, config, pending=pending_corpus)
    errors.update(corpus_errors)
    try:
        if rebuild:
            config = _with_model(config, n_layer=depth, d_model=width)
        cfg = RunConfig.from_dict(config)
    except ConfigError as exc:
        raise ConfigError({**exc.errors, **errors}) from None
    if errors:
        raise ConfigError(errors)
    return cfg


def resource_errors(cfg: RunConfig, queue: str) -> dict[str, str]:
    """What ``cfg`` asks beyond the limits of ``queue``'s workers (``H3LAB_QUEUE_LIMITS``),
    by the fields that drive each estimate, with the estimate and the limit in the message."""
    limits = settings.H3LAB_QUEUE_LIMITS.get(queue)
    if limits is None:
        return {"queue": f"unknown queue {queue!r}"}
    est = estimate(cfg)
    errors: dict[str, list[str]] = {}

    def refuse(keys: tuple[str, ...], message: str) -> None:
        for key in keys:
            errors.setdefault(key, []).append(message)

    model_keys = ("model.n_layer", "model.d_model")
    if est.parameters > limits["max_params"]:
        refuse(
            model_keys,
            f"the model would have {est.parameters:,} parameters; the {queue} queue allows "
            f"{limits['max_params']:,}",
        )
    max_bytes = limits["max_memory_mb"] * 2**20
    if est.memory_bytes > max_bytes:
        keys: tuple[str, ...] = ("task.seq_len", "train.batch_size")
        if est.weights_bytes > max_bytes:
            keys = model_keys + keys
        refuse(
            keys,
            f"training would need ≈ {est.memory_bytes / 2**30:,.1f} GiB (estimated peak); the "
            f"{queue} queue allows {limits['max_memory_mb'] / 1024:,.1f} GiB",
        )
    processes = int(getattr(cfg.train, "processes", 1) or 1)
    if processes > 1 and queue != "gpu":
        # Each training process has the queue's memory cap: N processes on a CPU worker would
        # take N times what the queue allows. Data-parallel runs belong on the GPU workers.
        refuse(
            ("train.processes",),
            f"a run of {processes} processes runs on the gpu queue only (the {queue} queue's "
            "workers train one process per run)",
        )
    if est.flops > limits["max_gflop"] * 10**9:
        refuse(
            ("train.steps",),
            f"the run would take ≈ {est.flops / 1e9:,.0f} GFLOP; the {queue} queue allows "
            f"{limits['max_gflop']:,} GFLOP",
        )
    return {key: "; ".join(messages) for key, messages in errors.items()}


def run_estimate(config: dict[str, Any]) -> Estimate | None:
    """The estimate of a stored or submitted config, None if it does not validate."""
    try:
        return estimate(RunConfig.from_dict(config))
    except ConfigError:
        return None


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``overrides`` merged into ``base`` section by section (nested dicts merge)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _with_model(config: dict[str, Any], *, n_layer: int, d_model: int) -> dict[str, Any]:
    """``config`` with the model its preset names at this depth and width, keeping the other
    settings of its ``model`` section (state size, heads …). Raises ConfigError as
    :meth:`RunConfig.build` does; a section that cannot even be read leaves the model out, so
    that :meth:`RunConfig.from_dict` names the bad field precisely."""
    model = config.get("model")
    kept = model if isinstance(model, dict) else {}
    model_kw = {k: v for k, v in kept.items() if k not in ("vocab_size", "d_model", "mixers")}
    without = {k: v for k, v in config.items() if k != "model"}
    try:
        built = RunConfig.build(
            preset=str(config.get("preset", "h3")),
            n_layer=n_layer,
            d_model=d_model,
            task=TaskConfig(**config.get("task", {})),
            train=TrainConfig(**config.get("train", {})),
            **model_kw,
        )
    except ConfigError:
        raise
    except (TypeError, ValueError):
        return without
    return {**without, "model": built.model.to_dict()}


def _checked_corpus(
    project: Project, config: dict[str, Any], *, pending: Path | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """SECURITY: a text/jsonl task reads the file at ``task.path`` on the worker. It may only
    name a file uploaded to the project (by name, or by its stored path), never an arbitrary
    path on the server. Returns the config with the path made absolute, and the error if any."""
    task = config.get("task")
    if not isinstance(task, dict) or not task.get("path") or not isinstance(task["path"], str):
        return config, {}
    folder = corpus_dir(project).resolve()
    candidate = Path(task["path"])
    resolved = (candidate if candidate.is_absolute() else folder / candidate).resolve()
    is_pending = pending is not None and resolved == pending.resolve()
    if resolved.parent != folder or not (resolved.is_file() or is_pending):
        uploaded = ", ".join(project_corpora(project)) or "none uploaded yet"
        return config, {"task.path": f"name a file uploaded to this project ({uploaded})"}
    return {**config, "task": {**task, "path": str(resolved)}}, {}


def _limit_errors(
    config: dict[str, Any], *, n_layer: int | None, d_model: int | None
) -> dict[str, str]:
    """The platform's limits. ``n_layer``/``d_model`` are those the model will be built with;
    None means the config's own ``model`` section is used and is checked instead."""
    model = _section(config, "model")
    task, train = _section(config, "task"), _section(config, "train")
    mixers = model.get("mixers")
    checks: list[tuple[str, Any, int, int | None]] = [
        ("task.vocab_size", task.get("vocab_size"), 1, MAX_VOCAB),
        ("task.seed", task.get("seed"), 0, MAX_SEED),
        ("train.seed", train.get("seed"), 0, MAX_SEED),
    ]
    if n_layer is None:
        depth = len(mixers) if isinstance(mixers, list | tuple) else None
        checks += [
            ("model.n_layer", depth, 1, MAX_LAYERS),
            ("model.d_model", model.get("d_model"), 1, MAX_D_MODEL),
            ("model.vocab_size", model.get("vocab_size"), 2, MAX_VOCAB),
        ]
    else:
        checks += [
            ("model.n_layer", n_layer, 1, MAX_LAYERS),
            ("model.d_model", d_model, 1, MAX_D_MODEL),
        ]
    errors = {}
    for key, value, low, high in checks:
        if not isinstance(value, int) or isinstance(value, bool):
            continue  # RunConfig reports values of the wrong type
        if value < low or (high is not None and value > high):
            errors[key] = f"must be between {low:,} and {high:,}" if high else f"must be ≥ {low}"
    return errors


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    return value if isinstance(value, dict) else {}
