"""Run as a script by tests/test_packaging.py, in a fresh interpreter: load the web process the
way gunicorn does (``h3lab.wsgi``), migrate an empty SQLite database, serve the pages and API
calls a researcher makes (including submitting a run, which sends a job to the broker), then
print which heavy modules got imported, as JSON. The web image is built without torch on the
strength of this trace (Dockerfile, target ``web``).

Needs H3LAB_VAR_DIR pointing at an empty folder; the broker is the embedded filesystem one.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["DJANGO_SETTINGS_MODULE"] = "h3lab.settings"

from h3lab.wsgi import application  # the WSGI entry point gunicorn loads


def main() -> None:
    from django.core.management import call_command
    from django.test import Client
    from django.urls import get_resolver, reverse

    from tests import factories

    call_command("migrate", verbosity=0)
    call_command("check")
    get_resolver().url_patterns  # noqa: B018  (imports every view module)

    alice = factories.make_user("alice")
    project = factories.make_project("induction", members=[alice])
    run = factories.make_run(project, user=alice)
    factories.add_metrics(run, "train/loss", [2.0, 1.5, 1.0])
    finding = factories.make_finding(project, created_by=alice)
    client = Client()
    client.force_login(alice)
    pages = {
        "home": reverse("home"),
        "project": project.get_absolute_url(),
        "run": run.get_absolute_url(),
        "finding": finding.get_absolute_url(),
        "api-runs": reverse("api-run-list"),
        "api-run": reverse("api-run-detail", args=[run.pk]),
        "api-schema": reverse("api-schema"),
    }
    status = {name: client.get(url).status_code for name, url in pages.items()}
    submitted = client.post(
        reverse("api-run-list"),
        json.dumps({"project": "induction", "config": factories.tiny_config().to_dict()}),
        content_type="application/json",
    )
    status["api-submit"] = submitted.status_code
    from experiments.models import Run

    sent = Run.objects.exclude(pk=run.pk).exclude(celery_task_id="").count()
    heavy = ["torch", "numpy", "matplotlib", "safetensors", "einops", "h3lab.jobs", "h3lab.train"]
    print(
        json.dumps(
            {
                "status": status,
                "jobs_sent": sent,
                "imported": {m: m in sys.modules for m in heavy},
                "wsgi": callable(application),
            }
        )
    )


if __name__ == "__main__":
    main()
