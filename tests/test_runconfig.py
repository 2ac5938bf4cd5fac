"""One run-config assembly for the web form and the API (experiments.runconfig): the same input
builds the same config, and the same bad input is refused with the same field error."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse

from experiments.forms import RunForm
from experiments.models import Run
from experiments.runconfig import build_run_config, corpus_dir
from h3lab.config import ConfigError, TaskConfig
from tests import factories
from tests.conftest import Lab
from tests.test_api import api, error, post
from tests.test_forms import VALID

pytestmark = pytest.mark.django_db

# The form's fields as the API's config sections (the form's VALID input).
AS_CONFIG: dict[str, Any] = {
    "preset": "h3",
    "task": {"name": "induction_head", "vocab_size": 20, "seq_len": 30, "seed": 7},
    "train": {"steps": 400, "lr": 0.0005, "batch_size": 32, "seed": 7},
}


def submit_on_the_page(client: Client, lab: Lab, **changes: str) -> Any:
    return client.post(reverse("run-new", args=[lab.project.slug]), {**VALID, **changes})


def submit_through_the_api(lab: Lab, config: dict[str, Any], **extra: Any) -> Any:
    body = {"project": lab.project.slug, "experiment": "induction", "config": config, **extra}
    return post(api(lab.alice, "submit"), reverse("api-run-list"), body)


def page_errors(response: Any) -> dict[str, list[str]]:
    return {k: list(v) for k, v in response.context["form"].errors.items()}


def test_the_page_and_the_api_build_the_same_config_from_the_same_input(
    as_alice: Client, lab: Lab
) -> None:
    assert submit_on_the_page(as_alice, lab).status_code == 302
    response = submit_through_the_api(lab, AS_CONFIG, n_layer=2, d_model=64)
    assert response.status_code == 201, response.content
    from_page, from_api = Run.objects.order_by("pk")
    assert from_page.config == from_api.config


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("d_model", 20000, "model.d_model"),
        ("vocab_size", 2_000_000, "task.vocab_size"),
        ("seed", -1, "train.seed"),
    ],
)
def test_an_out_of_range_value_gets_the_same_message_on_the_page_and_through_the_api(
    as_alice: Client, lab: Lab, field: str, value: int, key: str
) -> None:
    page = submit_on_the_page(as_alice, lab, **{field: str(value)})
    assert page.status_code == 200
    if field == "d_model":  # through the API, the width of a model section given in full
        model = build_run_config(lab.project, AS_CONFIG).model.to_dict()
        config = {**AS_CONFIG, "model": {**model, "d_model": value}}
    else:
        section, name = key.split(".")
        config = {**AS_CONFIG, section: {**AS_CONFIG[section], name: value}}
    response = submit_through_the_api(lab, config)
    assert response.status_code == 400
    assert page_errors(page)[field] == error(response)["fields"][f"config.{key}"]
    assert Run.objects.exists() is False


def test_a_model_section_given_through_the_api_is_held_to_the_forms_limits(lab: Lab) -> None:
    model = build_run_config(lab.project, AS_CONFIG).model.to_dict()
    deep = {**AS_CONFIG, "model": {**model, "mixers": ["h3"] * 65}}
    wide_vocab = {**AS_CONFIG, "model": {**model, "vocab_size": 10**9}}
    with pytest.raises(ConfigError) as deep_error:
        build_run_config(lab.project, deep)
    with pytest.raises(ConfigError) as vocab_error:
        build_run_config(lab.project, wide_vocab)
    assert deep_error.value.errors == {"model.n_layer": "must be between 1 and 64"}
    assert vocab_error.value.errors == {"model.vocab_size": "must be between 2 and 1,000,000"}


def test_the_api_sets_the_process_count_and_refuses_one_that_cannot_split_the_batch(
    lab: Lab,
) -> None:
    """The form leaves ``train.processes`` at 1; the API's train overrides reach it."""
    two = {**AS_CONFIG, "train": {**AS_CONFIG["train"], "processes": 2}}
    three = {**AS_CONFIG, "train": {**AS_CONFIG["train"], "processes": 3}}
    assert build_run_config(lab.project, two).train.processes == 2
    assert build_run_config(lab.project, AS_CONFIG).train.processes == 1
    response = submit_through_the_api(lab, three)
    assert response.status_code == 400
    assert error(response)["fields"]["config.train.processes"] == [
        "must divide batch_size (the global batch is split evenly)"
    ]
    assert Run.objects.exists() is False


def test_repeating_a_run_whose_file_is_not_in_the_project_is_refused_on_both_paths(
    as_alice: Client, lab: Lab
) -> None:
    folder = corpus_dir(lab.project)
    folder.mkdir(parents=True)
    (folder / "ok.txt").write_text("to be or not to be " * 50)
    cfg = build_run_config(lab.project, {"task": {"name": "text", "path": "ok.txt", "seq_len": 16}})
    source_config = cfg.to_dict()
    source_config["task"]["path"] = "/etc/passwd"  # as stored by a run from before the check
    source = factories.make_run(lab.project)
    Run.objects.filter(pk=source.pk).update(config=source_config, task="text")
    source.refresh_from_db()

    data = {k: str(v) for k, v in RunForm.initial_from_run(source).items()}
    page = as_alice.post(reverse("run-rerun", args=[source.pk]), data)
    response = post(api(lab.alice, "submit"), reverse("api-run-rerun", args=[source.pk]), {})
    assert page.status_code == 200 and response.status_code == 400
    message = error(response)["fields"]["config.task.path"]
    assert page_errors(page)["corpus_upload"] == message
    assert message == ["name a file uploaded to this project (ok.txt)"]


def test_a_new_run_gets_a_validation_split_and_a_rerun_keeps_its_own(lab: Lab) -> None:
    """Selection and early stopping read validation only; a config without ``num_val`` is one
    stored before the split existed, so only reruns of those keep selecting on test."""
    fresh = build_run_config(lab.project, {"task": {"name": "induction_head_safari"}})
    assert fresh.task.num_val == TaskConfig.num_val > 0
    legacy = fresh.to_dict()
    del legacy["task"]["num_val"]
    assert build_run_config(lab.project, {}, base=legacy).task.num_val == 0
    assert build_run_config(lab.project, {"task": {"num_val": 0}}).task.num_val == 0
