"""The demo bundle: finished training runs packed small enough to commit, so the demo lab can
show models that have really learned their task without training them at first start.

A bundle is a folder::

    manifest.json              {"format": "h3lab.demo-bundle/1", "built_at": …,
                                "models": [{"name": …, "files": {file: SHA-256, …}}, …]}
    <name>/config.json         the run's RunConfig (RunConfig.to_dict())
    <name>/model.safetensors   the final checkpoint's weights (no optimizer state)
    <name>/metrics.jsonl       the run's history, one row a line: every evaluation, training
                               rows downsampled to at most MAX_TRAIN_ROWS
    <name>/provenance.json     how the weights came to be: the command that trained them, when,
                               the h3lab commit, seeds, steps, the weights' SHA-256 and the
                               test accuracy measured by the builder on the run's test split

:func:`build_bundle` reads h3lab run directories (what :func:`h3lab.train.train` leaves:
``checkpoint/``, ``metrics.json``; ``python -m h3lab train`` and the mechanism study write
them) and writes a bundle; :func:`verify_bundle` checks every file against the manifest before
anything is read from it and refuses a bundle that does not match. The digests catch a damaged
or edited file; they are not a signature (whoever can edit the folder can edit the manifest).

Only JSON and safetensors are read: loading a bundle runs no code. Pure: no Django.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from h3lab import __version__
from h3lab.config import RunConfig

if TYPE_CHECKING:
    from h3lab.nn.lm import LanguageModel

FORMAT = "h3lab.demo-bundle/1"
MANIFEST = "manifest.json"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
PROVENANCE_FILE = "provenance.json"
MODEL_FILES: tuple[str, ...] = (CONFIG_FILE, MODEL_FILE, METRICS_FILE, PROVENANCE_FILE)
MAX_TRAIN_ROWS = 200
FINISHED = ("completed", "early_stopped")
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class BundleError(Exception):
    """A run directory that cannot be bundled, or a bundle that does not verify."""


@dataclass(frozen=True)
class BundledModel:
    """One verified model of a bundle."""

    name: str
    folder: Path
    config: RunConfig
    provenance: dict[str, Any]
    history: list[dict[str, Any]]
    digests: dict[str, str]  # file name -> SHA-256, as verified

    @property
    def weights(self) -> Path:
        return self.folder / MODEL_FILE

    @property
    def test_accuracy(self) -> float:
        return float(self.provenance["evaluation"]["accuracy"])

    def load_model(self) -> LanguageModel:
        """The model (CPU, eval mode); safetensors only, strict."""
        from h3lab.analysis import load_model_files

        return load_model_files(self.folder)[0]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --- building ----------------------------------------------------------------------------------


def downsample_history(history: Sequence[dict[str, Any]], max_train: int) -> list[dict[str, Any]]:
    """Every evaluation row; training rows thinned to at most ``max_train`` (+ the last)."""
    train = [r for r in history if r.get("kind") == "train"]
    every = max(1, math.ceil(len(train) / max(1, max_train)))
    keep = {id(r) for r in train[::every]} | ({id(train[-1])} if train else set())
    return [r for r in history if r.get("kind") != "train" or id(r) in keep]


def _finished_run(run_dir: Path) -> tuple[Path, RunConfig, dict[str, Any]]:
    """The final checkpoint, config and ``metrics.json`` of a finished run in ``run_dir``."""
    from h3lab.checkpoint import find_checkpoint, read_config

    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise BundleError(f"{run_dir}: no metrics.json (the run has not finished)")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    status = metrics.get("final", {}).get("status")
    if status not in FINISHED:
        raise BundleError(f"{run_dir}: the run ended {status!r}, not {' or '.join(FINISHED)}")
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        raise BundleError(f"{run_dir}: no complete checkpoint/ (expected state.json in it)")
    return ckpt, read_config(ckpt), metrics


def git_commit(tree: Path | None = None) -> str:
    """The commit of the h3lab checkout at ``tree`` (default: this package's), ``+dirty`` when
    it has uncommitted changes; "unknown" outside a git checkout."""
    tree = tree or Path(__file__).resolve().parent.parent
    git = shutil.which("git")
    if git is None:
        return "unknown"
    try:
        # Fixed argument lists, no shell, no input: the interpreter's own checkout.
        head = subprocess.run(  # noqa: S603
            [git, "-C", str(tree), "rev-parse", "HEAD"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(  # noqa: S603
            [git, "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, check=True, timeout=30,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bundle_model(
    run_dir: Path,
    dest: Path,
    *,
    name: str,
    command: str,
    commit: str,
    built_at: str,
    min_accuracy: float,
) -> dict[str, str]:
    """Write one model's folder ``dest``; returns its files' digests."""
    from h3lab.analysis import AnalysisSpec, run_analysis
    from h3lab.curves import json_safe
    from h3lab.nn.lm import LanguageModel

    ckpt, cfg, metrics = _finished_run(run_dir)
    dest.mkdir(parents=True)
    # The final checkpoint's weights file as it is (the optimizer state lives in its own
    # file, which is not copied), and the config the platform's analyses read beside it.
    shutil.copyfile(ckpt / MODEL_FILE, dest / MODEL_FILE)
    (dest / CONFIG_FILE).write_text(
        json.dumps(cfg.to_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    # Measured here, by the platform's own evaluation of these two files: what an evaluation
    # of the imported run will report.
    with tempfile.TemporaryDirectory() as scratch:
        evaluation = run_analysis(AnalysisSpec(kind="evaluate"), dest, Path(scratch))
    accuracy = float(evaluation["accuracy"])
    if not accuracy >= min_accuracy:
        raise BundleError(
            f"{run_dir}: test accuracy {accuracy:.4f} is below the minimum {min_accuracy} "
            "(train longer, or lower --min-accuracy for a development bundle)"
        )
    history = downsample_history(metrics.get("history", []), MAX_TRAIN_ROWS)
    with (dest / METRICS_FILE).open("w", encoding="utf-8") as f:
        for row in history:
            f.write(json.dumps(json_safe(row), allow_nan=False) + "\n")
    final = metrics["final"]
    n_params = sum(p.numel() for p in LanguageModel(cfg.model).parameters())
    provenance = {
        "name": name,
        "source_run": run_dir.name,
        "command": command,
        "trained_at": _utc((run_dir / "metrics.json").stat().st_mtime),
        "built_at": built_at,
        "h3lab_commit": commit,
        "h3lab_version": __version__,
        "seed": cfg.train.seed,
        "task_seed": cfg.task.seed,
        "status": final.get("status"),
        "steps": final.get("step"),
        "elapsed_s": final.get("elapsed_s"),
        "device": final.get("device"),
        "parameters": n_params,
        "weights_sha256": sha256_file(dest / MODEL_FILE),
        "evaluation": {
            "split": "test",
            "accuracy": accuracy,
            "loss": evaluation["loss"],
            "examples": evaluation["examples"],
        },
        "train_loss": final.get("train_loss"),
    }
    (dest / PROVENANCE_FILE).write_text(
        json.dumps(json_safe(provenance), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return {f: sha256_file(dest / f) for f in MODEL_FILES}


def build_bundle(
    run_dirs: Sequence[Path],
    out: Path,
    *,
    command: str,
    min_accuracy: float = 0.95,
    commit: str | None = None,
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Bundle the finished runs in ``run_dirs`` into ``out`` (replaced as a whole, only once
    every model has been written). ``command`` is the command that trained them; a model
    whose test accuracy is below ``min_accuracy`` is refused. ``names`` default to the run
    directories' names. Returns the manifest written."""
    run_dirs = [Path(d) for d in run_dirs]
    names = list(names) if names is not None else [d.name for d in run_dirs]
    if not run_dirs:
        raise BundleError("give at least one run directory")
    if len(names) != len(run_dirs) or len(set(names)) != len(names):
        raise BundleError("give one distinct name per run directory")
    bad = [n for n in names if not NAME.match(n)]
    if bad:
        raise BundleError(f"model names must be lower-case letters, digits, - and _: {bad}")
    if not command.strip():
        raise BundleError("say which command trained the runs (--command)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    built_at = _utc(datetime.now(UTC).timestamp())
    commit = commit or git_commit()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would travel into the checkout and the wheel
    try:
        models = [
            {
                "name": name,
                "files": _bundle_model(
                    run_dir,
                    tmp / name,
                    name=name,
                    command=command.strip(),
                    commit=commit,
                    built_at=built_at,
                    min_accuracy=min_accuracy,
                ),
            }
            for run_dir, name in zip(run_dirs, names, strict=True)
        ]
        manifest = {"format": FORMAT, "built_at": built_at, "models": models}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# --- reading -----------------------------------------------------------------------------------


def _refuse(bundle: Path, why: str) -> BundleError:
    return BundleError(
        f"demo bundle {bundle} refused: {why}. Rebuild it with `python -m h3lab demo-bundle` "
        "(docs/quickstart.md, The demo lab)"
    )


def verify_bundle(bundle: Path) -> list[BundledModel]:
    """Every model of the bundle at ``bundle``, after checking each file's SHA-256 against the
    manifest (and the weights' against their provenance). Raises :class:`BundleError` naming
    the first file that is missing, unexpected or different."""
    bundle = Path(bundle)
    try:
        manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise _refuse(bundle, f"{MANIFEST} is unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _refuse(bundle, f"{MANIFEST} is not a {FORMAT} manifest")
    entries = manifest.get("models")
    if not isinstance(entries, list) or not entries:
        raise _refuse(bundle, f"{MANIFEST} lists no models")
    models: list[BundledModel] = []
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not NAME.match(name):
            raise _refuse(bundle, f"{MANIFEST} has a model without a valid name ({name!r})")
        files = entry.get("files")
        if not isinstance(files, dict) or set(files) != set(MODEL_FILES):
            raise _refuse(bundle, f"{MANIFEST} must list exactly {', '.join(MODEL_FILES)} "
                          f"for {name}")  # fmt: skip
        folder = bundle / name
        present = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        for file in MODEL_FILES:
            if file not in present:
                raise _refuse(bundle, f"{name}/{file} is missing")
            found = sha256_file(folder / file)
            if found != files[file]:
                raise _refuse(
                    bundle,
                    f"{name}/{file} does not match its SHA-256 in {MANIFEST} "
                    f"(expected {files[file][:16]}…, found {found[:16]}…)",
                )
        extra = sorted(present - set(MODEL_FILES))
        if extra:
            raise _refuse(bundle, f"{name}/ holds files the manifest does not list: {extra}")
        provenance = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
        if provenance.get("weights_sha256") != files[MODEL_FILE]:
            raise _refuse(bundle, f"{name}/{PROVENANCE_FILE} names other weights")
        config = RunConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8")))
        history = [
            json.loads(line)
            for line in (folder / METRICS_FILE).read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
        models.append(
            BundledModel(
                name=name,
                folder=folder,
                config=config,
                provenance=provenance,
                history=history,
                digests=dict(files),
            )
        )
    return models


__all__ = [
    "FORMAT",
    "BundleError",
    "BundledModel",
    "build_bundle",
    "verify_bundle",
]
