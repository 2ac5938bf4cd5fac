"""Resource limits before a run is accepted: the same refusal on the page and through the API,
naming the fields that drive the estimate, with the estimate and the limit in the message; and
a per-project cap on queued and training runs."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.actions.runs import check_submit_run
from experiments.models import Run, RunStatus
from experiments.runconfig import build_run_config
from h3lab.config import ConfigError, RunConfig
from h3lab.estimate import parameters
from tests import factories
from tests.conftest import Lab
from tests.test_api import error
from tests.test_runconfig import AS_CONFIG, page_errors, submit_on_the_page, submit_through_the_api

pytestmark = pytest.mark.django_db


def test_a_hundred_thousand_layers_are_refused_through_the_api(lab: Lab) -> None:
    model = build_run_config(lab.project, AS_CONFIG).model.to_dict()
    config = {**AS_CONFIG, "model": {**model, "mixers": ["h3"] * 100_000}}

    response = submit_through_the_api(lab, config)

    assert response.status_code == 400
    assert error(response)["fields"]["config.model.n_layer"] == ["must be between 1 and 64"]
    assert Run.objects.exists() is False


def test_a_mixer_list_that_disagrees_with_n_layer_is_refused(lab: Lab) -> None:
    model = build_run_config(lab.project, AS_CONFIG).model.to_dict()
    config = {**AS_CONFIG, "model": {**model, "mixers": ["h3"] * 3}}

    response = submit_through_the_api(lab, config, n_layer=2)

    assert response.status_code == 400
    fields = error(response)["fields"]
    assert fields["config.model.mixers"] == ["has 3 layers but n_layer is 2"]


def test_a_model_too_large_for_the_cpu_queue_is_refused_naming_depth_and_width(lab: Lab) -> None:
    response = submit_through_the_api(lab, AS_CONFIG, n_layer=64, d_model=16384)

    assert response.status_code == 400
    fields = error(response)["fields"]
    for key in ("config.model.n_layer", "config.model.d_model"):
        (message,) = fields[key]
        assert "parameters; the cpu queue allows 200,000,000" in message
        assert "GiB (estimated peak); the cpu queue allows 4.0 GiB" in message
    assert Run.objects.exists() is False


def test_too_many_tokens_per_batch_are_refused_on_the_page(as_alice: Client, lab: Lab) -> None:
    page = submit_on_the_page(as_alice, lab, seq_len="65536", batch_size="4096")

    assert page.status_code == 200
    errors = page_errors(page)
    for field in ("seq_len", "batch_size"):
        assert any("the cpu queue allows 4.0 GiB" in m for m in errors[field]), errors
    assert "n_layer" not in errors  # the weights fit; the activations do not
    assert Run.objects.exists() is False


def test_the_gpu_queue_allows_what_the_cpu_queue_refuses(as_alice: Client, lab: Lab) -> None:
    big = {"d_model": "1024", "n_layer": "8", "seq_len": "1024", "batch_size": "16"}
    assert submit_on_the_page(as_alice, lab, **big).status_code == 200
    assert submit_on_the_page(as_alice, lab, **big, queue="gpu").status_code == 302
    assert Run.objects.get().queue == "gpu"


def test_a_long_run_is_refused_by_its_compute_naming_the_steps(lab: Lab) -> None:
    config = {**AS_CONFIG, "train": {**AS_CONFIG["train"], "steps": 1_000_000}}

    response = submit_through_the_api(lab, config, n_layer=8, d_model=512)

    assert response.status_code == 400
    (message,) = error(response)["fields"]["config.train.steps"]
    assert message.endswith("GFLOP; the cpu queue allows 2,000,000 GFLOP")


def test_the_run_form_shows_the_estimate_of_its_values(as_alice: Client, lab: Lab) -> None:
    page = as_alice.get(reverse("run-new", args=[lab.project.slug]))

    assert page.status_code == 200
    # The form's initial values, associative recall's quick-start preset: H3, 2 × 64,
    # vocabulary 8, 16 tokens, batch 128, 600 steps.
    assert "Estimated cost: ≈ 133.8 k params, ≈ " in page.content.decode()


def test_the_api_answers_with_the_runs_estimate(lab: Lab) -> None:
    response = submit_through_the_api(lab, AS_CONFIG, n_layer=2, d_model=64)

    assert response.status_code == 201
    estimate = response.json()["estimate"]
    run = Run.objects.get()
    assert estimate["parameters"] == parameters(RunConfig.from_dict(run.config).model) == 134_528
    assert estimate["memory_bytes"] > 16 * estimate["parameters"]
    assert estimate["flops"] > 6 * estimate["parameters"] * 400 * 32 * 30


def _submit(lab: Lab) -> Run:
    return check_submit_run(
        project=lab.project,
        config=factories.tiny_config().to_dict(),
        enqueue=False,
        acting_user=lab.alice,
    )


def test_a_project_may_not_queue_more_than_its_backlog(lab: Lab, settings: Any) -> None:
    settings.H3LAB_MAX_QUEUED_RUNS_PER_PROJECT = 2
    _submit(lab), _submit(lab)

    with pytest.raises(ConfigError) as refused:
        _submit(lab)

    assert refused.value.errors == {
        "project": f"{lab.project.name} already has 2 queued runs, the most a project may "
        "have; wait for some to start or cancel some"
    }
    assert Run.objects.count() == 2


def test_a_project_may_not_submit_while_its_running_cap_is_reached(lab: Lab, settings: Any) -> None:
    settings.H3LAB_MAX_RUNNING_RUNS_PER_PROJECT = 1
    factories.make_run(lab.project, status=RunStatus.RUNNING)

    with pytest.raises(ConfigError) as refused:
        _submit(lab)

    assert "already has 1 runs training" in refused.value.errors["project"]


def test_a_refused_backlog_is_a_non_field_error_on_the_page(
    as_alice: Client, lab: Lab, settings: Any
) -> None:
    settings.H3LAB_MAX_QUEUED_RUNS_PER_PROJECT = 0

    page = submit_on_the_page(as_alice, lab)

    assert page.status_code == 200
    (message,) = page.context["form"].non_field_errors()
    assert "queued runs, the most a project may have" in message


def test_a_data_parallel_run_goes_to_the_gpu_queue_only(lab: Lab) -> None:
    """Each training process has the queue's memory cap, so N processes on a CPU worker would
    take N times what the queue allows."""
    two = {**AS_CONFIG, "train": {**AS_CONFIG["train"], "processes": 2}}
    refused = submit_through_the_api(lab, two, queue="cpu")
    assert refused.status_code == 400
    (message,) = error(refused)["fields"]["config.train.processes"]
    assert "runs on the gpu queue only" in message
    assert submit_through_the_api(lab, two, queue="gpu").status_code == 201
    assert list(Run.objects.values_list("queue", flat=True)) == ["gpu"]
