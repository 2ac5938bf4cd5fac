"""Checkpoints as safetensors + JSON only — never pickle, so loading one runs no code.

A checkpoint is a directory::

    model.safetensors      model weights (tied weights stored once)
    config.json            RunConfig.to_dict()
    optimizer.safetensors  optimizer tensors, flattened as ``opt.{param_index}.{name}``,
                           plus RNG states as uint8 tensors ``rng.cpu`` / ``rng.cuda``
    state.json             everything else: optimizer param groups and non-tensor state,
                           the step, the loop's bookkeeping and the history so far

``state.json`` is written last, so a directory without it is incomplete. A new checkpoint is
written into ``<name>.tmp`` and swapped in with ``os.replace``: the old one is renamed to
``<name>.old`` first and removed after, and :func:`find_checkpoint` falls back to ``.old``,
so a kill at any moment leaves a complete checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, load_model, save_file, save_model

from h3lab.config import RunConfig

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
