"""Checkpoints as safetensors + JSON only — never pickle, so loading one runs no code.

A checkpoint is a directory::

    model.safetensors      model weights (tied weights stored once)
    config.json            RunConfig.to_dict()
    optimizer.safetensors  optimizer tensors, flattened as ``opt.{param_index}.{name}``,
                           plus RNG states as uint8 tensors ``rng.cpu`` / ``rng.cuda``
    state.json             everything else: optimizer param groups and non-tensor state,
                           the step, the loop's bookkeeping and the history so far

A *pretrained export* (:func:`save_pretrained`, :func:`from_pretrained`) is the inference
half alone — ``config.json`` (model config, optional task, provenance), ``model.safetensors``
and a ``README.md`` model card — loadable without any training state.

``state.json`` is written last, so a directory without it is incomplete. A new checkpoint is
written into ``<name>.tmp`` and swapped in with ``os.replace``: the old one is renamed to
``<name>.old`` first and removed after, and :func:`find_checkpoint` falls back to ``.old``,
so a kill at any moment leaves a complete checkpoint behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from h3lab.config import RunConfig, TaskConfig
from h3lab.nn.config import LMConfig

if TYPE_CHECKING:
    from h3lab.nn.lm import LanguageModel

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with path.open("rb+") as f:
        os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a temp file beside ``path``, fsync, ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    _fsync_file(tmp)
    os.replace(tmp, path)


def _flatten_optimizer(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for idx, per_param in sd["state"].items():
        for name, value in per_param.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": other}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in rest["state"].items():
        state.setdefault(int(idx), {}).update(values)
    groups = [dict(g) for g in rest["param_groups"]]
    for g in groups:  # JSON turned tuples into lists
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
    return {"state": state, "param_groups": groups}


def rng_states(device: torch.device) -> dict[str, torch.Tensor]:
    """The global RNG states training depends on (dropout), as uint8 tensors."""
    states = {"rng.cpu": torch.get_rng_state()}
    if device.type == "cuda":
        states["rng.cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, torch.Tensor], device: torch.device) -> None:
    if "rng.cpu" in states:
        torch.set_rng_state(states["rng.cpu"])
    if device.type == "cuda" and "rng.cuda" in states:
        torch.cuda.set_rng_state(states["rng.cuda"], device)


def save_checkpoint(
    ckpt_dir: Path,
    *,
    model: torch.nn.Module,
    cfg: RunConfig,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a complete checkpoint to ``ckpt_dir``, replacing any previous one atomically.

    ``state`` must be JSON-able (no NaN). Returns ``ckpt_dir``.
    """
    ckpt_dir = Path(ckpt_dir)
    tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
    old = ckpt_dir.with_name(ckpt_dir.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / MODEL_FILE), metadata={"format": "pt"})
    write_json(tmp / CONFIG_FILE, cfg.to_dict())
    tensors, rest = (
        _flatten_optimizer(optimizer) if optimizer else ({}, {"param_groups": [], "state": {}})
    )
    tensors.update(rng or {})
    save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata={"format": "pt"})
    write_json(tmp / STATE_FILE, {**(state or {}), "optimizer": rest})  # last: marks complete
    for name in (MODEL_FILE, OPTIMIZER_FILE):
        _fsync_file(tmp / name)
    _fsync_dir(tmp)
    if (ckpt_dir / STATE_FILE).exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(ckpt_dir, old)
    else:
        shutil.rmtree(ckpt_dir, ignore_errors=True)  # an incomplete leftover
    os.replace(tmp, ckpt_dir)
    _fsync_dir(ckpt_dir.parent)
    shutil.rmtree(old, ignore_errors=True)
    return ckpt_dir


def find_checkpoint(path: Path) -> Path | None:
    """The complete checkpoint at ``path`` (a checkpoint dir or a run dir holding
    ``checkpoint/``), recovering one left as ``.old`` by an interrupted swap; else None."""
    path = Path(path)
    for candidate in (path, path / "checkpoint"):
        if (candidate / STATE_FILE).exists():
            return candidate
        old = candidate.with_name(candidate.name + ".old")
        if (old / STATE_FILE).exists() and not candidate.exists():
            os.replace(old, candidate)
            return candidate
    return None


def read_config(ckpt_dir: Path) -> RunConfig:
    return RunConfig.from_dict(json.loads((ckpt_dir / CONFIG_FILE).read_text(encoding="utf-8")))


def load_checkpoint(path: str | Path) -> tuple[LanguageModel, RunConfig]:
    """The model (on CPU, eval mode) and run config saved at ``path`` — a checkpoint directory
    or a run directory containing ``checkpoint/``. Raises FileNotFoundError if none."""
    from h3lab.nn.lm import LanguageModel

    ckpt = find_checkpoint(Path(path))
    if ckpt is None:
        raise FileNotFoundError(f"no checkpoint at {path} (expected {STATE_FILE} in it)")
    cfg = read_config(ckpt)
    model = LanguageModel(cfg.model)
    load_model(model, str(ckpt / MODEL_FILE), strict=True)
    return model.eval(), cfg


def restore_training(
    ckpt_dir: Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load weights and optimizer state in place; return ``(state, rng_states)``."""
    device = next(model.parameters()).device
    load_model(model, str(ckpt_dir / MODEL_FILE), strict=True, device=str(device))
    state = json.loads((ckpt_dir / STATE_FILE).read_text(encoding="utf-8"))
    tensors = load_file(str(ckpt_dir / OPTIMIZER_FILE))
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state.pop("optimizer")))
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return state, rng


# --------------------------------------------------------------------------------------------
# Pretrained models: weights + config + model card, no training state
# --------------------------------------------------------------------------------------------

PRETRAINED_FORMAT = "h3lab.pretrained/1"
CARD_FILE = "README.md"


def save_pretrained(
    out: str | Path,
    model: torch.nn.Module,
    model_cfg: LMConfig,
    *,
    task: TaskConfig | None = None,
    card: str = "",
    source: dict[str, Any] | None = None,
) -> Path:
    """Write a model anyone can load without its training state::

        config.json        {"format": "h3lab.pretrained/1", "model": LMConfig, "task": … | null,
                            "source": {…}}
        model.safetensors  the weights (tied weights stored once)
        README.md          a model card: architecture, task, where the weights came from

    ``task`` (optional) is the dataset the model was trained on, so ``eval`` can regenerate
    its test set; ``source`` records provenance (a run's config, a converted checkpoint's
    path). Files are replaced atomically one by one. Returns the directory."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": PRETRAINED_FORMAT,
        "model": model_cfg.to_dict(),
        "task": None if task is None else dataclasses.asdict(task),
        "source": source or {},
    }
    tmp = out / (MODEL_FILE + ".tmp")
    save_model(model, str(tmp), metadata={"format": "pt"})
    _fsync_file(tmp)
    os.replace(tmp, out / MODEL_FILE)
    write_json(out / CONFIG_FILE, config)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights counted once
    card = card or model_card(model_cfg, task, source, n_params)
    (out / CARD_FILE).write_text(card, encoding="utf-8")
    _fsync_dir(out)
    return out


def is_pretrained(path: str | Path) -> bool:
    """Whether ``path`` holds a :func:`save_pretrained` export."""
    cfg_path = Path(path) / CONFIG_FILE
    if not cfg_path.is_file() or not (Path(path) / MODEL_FILE).is_file():
        return False
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == PRETRAINED_FORMAT


def from_pretrained(path: str | Path) -> tuple[LanguageModel, LMConfig, TaskConfig | None]:
    """Load a model for inference — from a :func:`save_pretrained` export, or from a training
    checkpoint (whose optimizer state is then not read). Returns ``(model in eval mode on
    CPU, its LMConfig, its TaskConfig or None)``. Loads safetensors and JSON only: no code
    runs. Raises FileNotFoundError if ``path`` holds neither."""
    from h3lab.nn.lm import LanguageModel

    path = Path(path)
    if is_pretrained(path):
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        model_cfg = LMConfig.from_dict(data["model"])
        task = TaskConfig(**data["task"]) if data.get("task") else None
        model = LanguageModel(model_cfg)
        load_model(model, str(path / MODEL_FILE), strict=True)
        return model.eval(), model_cfg, task
    ckpt = find_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(
            f"no model at {path} (expected an export's {CONFIG_FILE} + {MODEL_FILE}, or a "
            f"training checkpoint with {STATE_FILE})"
        )
    run_model, cfg = load_checkpoint(ckpt)
    return run_model, cfg.model, cfg.task


def model_card(
    model_cfg: LMConfig,
    task: TaskConfig | None,
    source: dict[str, Any] | None,
    n_params: int | None = None,
) -> str:
    """A short model card (README.md) for an export."""
    mixers = ", ".join(f"{i}: {m}" for i, m in enumerate(model_cfg.mixers))
    lines = [
        "# h3lab language model",
        "",
        f"- Architecture: {model_cfg.n_layer} layers ({mixers}), d_model {model_cfg.d_model}, "
        f"vocabulary {model_cfg.vocab_size}, SSM state {model_cfg.d_state}, H3 head_dim "
        f"{model_cfg.head_dim} ({model_cfg.h3_ssm} SSMs), {model_cfg.discretization} "
        "discretisation.",
        f"- Parameters: {'unknown' if n_params is None else f'{n_params:,}'}.",
        f"- Task: {task.name if task else 'not recorded (converted weights)'}"
        + (
            f", vocabulary {task.vocab_size}, seq_len {task.seq_len}, seed {task.seed}."
            if task
            else "."
        ),
        "",
        "## Load",
        "",
        "```python",
        "from h3lab.checkpoint import from_pretrained",
        "model, model_cfg, task = from_pretrained('THIS_DIRECTORY')",
        "```",
        "",
        "or `python -m h3lab eval --checkpoint THIS_DIRECTORY` /",
        '`python -m h3lab generate --checkpoint THIS_DIRECTORY --prompt "1 2 3"`.',
        "Only `config.json` (JSON) and `model.safetensors` are read: loading runs no code.",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(source or {}, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)
