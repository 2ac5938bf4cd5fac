"""Text corpora uploaded to a project, for runs of the text tasks.

A corpus lives in the project's corpus folder (:func:`experiments.runconfig.corpus_dir`), under
a name made from a slug of the uploaded file's stem and a random suffix, and a run names it by
that name (``task.path``). The API's upload calls :func:`check_upload_corpus`; the run form
writes its upload with the same checks (:mod:`experiments.forms`).
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils.text import slugify

from experiments.forms import MAX_CORPUS_BYTES, _check_utf8
from experiments.models import Project
from experiments.runconfig import corpus_dir
from experiments.signals import announce
from experiments.users import ActingUser


def corpus_target(project: Project, filename: str) -> Path:
    """Where an upload named ``filename`` is stored. SECURITY: the client's file name is never
    used as a path; only a slug of its stem is kept, for recognisability, plus a random suffix
    so that uploads never overwrite each other."""
    stem = slugify(Path(filename or "corpus").stem)[:40] or "corpus"
    return corpus_dir(project) / f"{stem}-{secrets.token_hex(4)}.txt"


def check_upload_corpus(
    project: Project, upload: UploadedFile[bytes], *, acting_user: ActingUser
) -> Path:
    """Refuse anything but non-empty UTF-8 text up to 200 MB (read in chunks, never whole),
    then store it."""
    if upload.size and upload.size > MAX_CORPUS_BYTES:
        raise ValidationError({"file": "Files up to 200 MB can be uploaded."})
    try:
        _check_utf8(upload)
    except ValidationError as err:
        raise ValidationError({"file": err.messages}) from None
    return do_store_corpus(project, upload, acting_user=acting_user)


def do_store_corpus(
    project: Project, upload: UploadedFile[bytes], *, acting_user: ActingUser
) -> Path:
    """Write the upload beside its final name (a dot-file, which no listing shows), record it
    in the audit log, and move it into place once the entry is written; on any failure
    nothing is left behind."""
    target = corpus_target(project, upload.name or "")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    size = 0
    try:
        with part.open("xb") as out:
            for chunk in upload.chunks():
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        with transaction.atomic():
            announce(
                acting_user,
                "corpus.upload",
                project,
                new={"name": target.name, "size": size, "sha256": digest.hexdigest()},
            )
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    return target
