"""Where artifact bytes live. One seam, so that at-rest encryption can change how bytes are
stored without touching the views that serve them.

SECURITY: artifacts are never served by the web server directly; only
:func:`open_artifact` reads them, and only the permission-checked download view calls it.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

from experiments.models import Artifact, ArtifactKind, Run

CHUNK = 1 << 20


def artifact_root() -> Path:
    return Path(settings.ARTIFACTS_DIR)


def run_workdir(run_id: int) -> Path:
    """The scratch directory a worker trains in (checkpoints for resume live here)."""
    return Path(settings.RUNS_DIR) / str(run_id)


def sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def guess_kind(name: str) -> str:
    if name.endswith(".safetensors"):
        return ArtifactKind.CHECKPOINT
    if name.endswith((".png", ".svg")):
        return ArtifactKind.PLOT
    if name.endswith(".log"):
        return ArtifactKind.LOG
    if name == "config.json":
        return ArtifactKind.CONFIG
    if name.startswith("metrics") and name.endswith(".json"):
        return ArtifactKind.METRICS
    return ArtifactKind.OTHER


def store_file(run: Run, src: Path, name: str, kind: str | None = None) -> Artifact:
    """Copy ``src`` into artifact storage for ``run`` and return the (unsaved) Artifact."""
    rel = Path(run.project.slug) / str(run.pk) / name
    dest = artifact_root() / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    digest, size = sha256_file(dest)
    ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return Artifact(
        run=run,
        project=run.project,
        name=name,
        kind=kind or guess_kind(name),
        path=str(rel),
        content_type=ctype,
        size=size,
        sha256=digest,
    )


def open_artifact(artifact: Artifact) -> Iterator[bytes]:
    """Stream an artifact's bytes. Raises FileNotFoundError if storage lost the file."""
    path = artifact_root() / artifact.path
    # SECURITY: the stored path is relative and written only by store_file; refuse anything
    # that would escape the storage root anyway.
    root = artifact_root().resolve()
    if root not in path.resolve().parents:
        raise FileNotFoundError(artifact.path)
    f = path.open("rb")

    def chunks() -> Iterator[bytes]:
        with f:
            while chunk := f.read(CHUNK):
                yield chunk

    return chunks()
