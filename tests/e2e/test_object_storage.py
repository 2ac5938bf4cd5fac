"""End to end: a worker on "another host" (its own H3LAB_DATA_DIR, nothing shared with the web
process but the database, the broker and the bucket) trains a run whose artifacts land in the
S3 bucket and download through the web. The S3 endpoint is moto's server, started by the
fixtures of tests/test_object_storage.py.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse

pytest.importorskip("moto.server", reason="moto[server] (requirements-dev.txt) is not installed")
pytest.importorskip("storages.backends.s3", reason="django-storages[s3] is not installed")

from experiments.actions.runs import check_submit_run
from experiments.models import Artifact, Run, RunStatus
from experiments.storage import artifact_root
from tests import factories
from tests.conftest import Lab, login
from tests.e2e.conftest import wait_for
from tests.test_object_storage import (  # the fixtures, by name
    bucket,
    files_under,
    object_bytes,
    on_s3,
    s3_endpoint,
    s3_env,
)
from vault import crypto

__all__ = ["on_s3", "s3_endpoint", "s3_env"]


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(600)
def test_a_worker_on_another_host_stores_its_outputs_in_the_bucket(
    lab: Lab, on_s3: dict[str, str], start_worker: Any, tmp_path: Path
) -> None:
    worker_data = tmp_path / "worker-host-data"  # not the web's H3LAB_DATA_DIR
    # The master key comes from the test's settings (start_worker passes it on).
    start_worker(env={**on_s3, "H3LAB_DATA_DIR": str(worker_data)})
    cfg = factories.tiny_config(device="cpu")
    run = check_submit_run(
        project=lab.project, config=cfg.to_dict(), experiment_name="s3", acting_user=lab.alice
    )
    final = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
    run = wait_for(
        lambda: (r := Run.objects.get(pk=run.pk)).status in final and r,
        timeout=240,
        what="the run to finish",
    )
    assert run.status == RunStatus.SUCCEEDED, run.error

    checkpoint = Artifact.objects.get(run=run, name="model.safetensors")
    keys = {o.key for o in bucket(on_s3).objects.all()}
    assert f"artifacts/{checkpoint.path}" in keys
    assert object_bytes(on_s3, f"artifacts/{checkpoint.path}").startswith(crypto.MAGIC)
    assert files_under(artifact_root()) == [], "the web's data folder holds no artifact"
    assert files_under(worker_data / "artifacts") == [], "nor does the worker's"
    response = login(lab.alice).get(reverse("artifact-download", args=[checkpoint.pk]))
    assert response.status_code == 200
    body = b"".join(response.streaming_content)  # type: ignore[attr-defined]
    assert hashlib.sha256(body).hexdigest() == checkpoint.sha256
    assert len(body) == checkpoint.size > 0
