"""The run form turns researcher input into a validated RunConfig, and every bad input is a
field error — never an exception."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from experiments.forms import RunFilterForm, RunForm
from experiments.models import Project, Run, RunStatus
from experiments.runconfig import corpus_dir, project_corpora
from h3lab.config import ConfigError, RunConfig
from tests import factories
from tests.conftest import Lab

VALID = {
    "experiment": "induction",
    "name": "baseline",
    "preset": "h3",
    "task": "induction_head",
    "vocab_size": "20",
    "seq_len": "30",
    "d_model": "64",
    "n_layer": "2",
    "steps": "400",
    "lr": "0.0005",
    "batch_size": "32",
    "seed": "7",
    "queue": "cpu",
}


def bound(project: Project, files: dict[str, Any] | None = None, /, **changes: str) -> RunForm:
    return RunForm({**VALID, **changes}, files or {}, project=project)


def config_or_errors(form: RunForm) -> dict[str, Any]:
    """The form's config, or its errors after mapping a ConfigError onto fields."""
    assert form.is_valid(), form.errors
    try:
        return form.config()
    except ConfigError as exc:
        form.add_config_errors(exc)
        return {}


def test_valid_input_builds_a_config_that_round_trips(lab: Lab) -> None:
    cfg = config_or_errors(bound(lab.project))
    parsed = RunConfig.from_dict(cfg)
    assert parsed.preset == "h3"
    assert parsed.model.mixers == ("h3", "h3")
    assert parsed.task.name == "induction_head"
    assert (parsed.task.vocab_size, parsed.task.seq_len, parsed.task.seed) == (20, 30, 7)
    assert (parsed.train.steps, parsed.train.lr, parsed.train.seed) == (400, 5e-4, 7)


def test_the_papers_tasks_and_gss_are_offered_and_build_valid_configs(lab: Lab) -> None:
    form = RunForm(project=lab.project)
    tasks = dict(form.fields["task"].choices)  # type: ignore[attr-defined]
    presets = dict(form.fields["preset"].choices)  # type: ignore[attr-defined]
    assert {"associative_recall_safari", "induction_head_safari"} <= set(tasks)
    assert "gss" in presets
    changes = {"task": "associative_recall_safari", "vocab_size": "10", "seq_len": "20"}
    cfg = config_or_errors(bound(lab.project, preset="gss", **changes))
    assert cfg["task"]["name"] == "associative_recall_safari"
    assert cfg["model"]["mixers"] == ["gss", "gss"]


def test_hybrid_preset_puts_attention_in_the_second_layer(lab: Lab) -> None:
    cfg = config_or_errors(bound(lab.project, preset="hybrid", n_layer="4"))
    assert cfg["model"]["mixers"] == ["h3", "attn", "attn", "h3"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": "0"}, "steps"),
        ({"n_layer": "0"}, "n_layer"),
        ({"lr": "-0.001"}, "lr"),
        ({"batch_size": "0"}, "batch_size"),
        ({"seq_len": "1"}, "seq_len"),
        ({"vocab_size": "2"}, "vocab_size"),
        ({"d_model": "0"}, "d_model"),
        ({"preset": "attention", "d_model": "30"}, "d_model"),
    ],
)
def test_config_errors_land_on_the_field_that_caused_them(
    lab: Lab, changes: dict[str, str], field: str
) -> None:
    form = bound(lab.project, **changes)
    assert config_or_errors(form) == {}
    assert field in form.errors, form.errors


@pytest.mark.parametrize("field", ["steps", "lr", "d_model", "seed"])
def test_non_numeric_values_are_field_errors(lab: Lab, field: str) -> None:
    form = bound(lab.project, **{field: "lots"})
    assert form.is_valid() is False
    assert field in form.errors


def test_text_task_without_a_file_is_a_field_error(lab: Lab) -> None:
    form = bound(lab.project, task="text")
    assert form.is_valid() is False
    assert "corpus_upload" in form.errors


def test_non_utf8_upload_is_rejected(lab: Lab) -> None:
    upload = SimpleUploadedFile("latin1.txt", "café crème".encode("latin-1"))
    form = bound(lab.project, {"corpus_upload": upload}, task="text")
    assert form.is_valid() is False
    assert "not UTF-8" in form.errors["corpus_upload"][0]


def test_empty_upload_is_rejected(lab: Lab) -> None:
    upload = SimpleUploadedFile("empty.txt", b"")
    form = bound(lab.project, {"corpus_upload": upload}, task="text")
    assert form.is_valid() is False
    assert "corpus_upload" in form.errors


def test_upload_is_saved_under_a_generated_name_in_the_projects_corpus_folder(lab: Lab) -> None:
    upload = SimpleUploadedFile("../../etc/My Corpus.txt", "hello wörld\n".encode() * 50)
    cfg = config_or_errors(bound(lab.project, {"corpus_upload": upload}, task="text"))
    saved = corpus_dir(lab.project) / project_corpora(lab.project)[0]
    assert cfg["task"]["path"] == str(saved)
    assert saved.parent == corpus_dir(lab.project)
    assert saved.name.startswith("my-corpus-") and saved.suffix == ".txt"
    assert saved.read_bytes() == "hello wörld\n".encode() * 50
    assert cfg["task"]["vocab_size"] == 256


def test_a_previously_uploaded_corpus_can_be_chosen_by_name_only(lab: Lab) -> None:
    folder = corpus_dir(lab.project)
    folder.mkdir(parents=True)
    (folder / "shakespeare-1a2b3c4d.txt").write_text("To be or not to be. " * 40)
    cfg = config_or_errors(bound(lab.project, task="text", corpus="shakespeare-1a2b3c4d.txt"))
    assert cfg["task"]["path"] == str(folder / "shakespeare-1a2b3c4d.txt")
    outside = bound(lab.project, task="text", corpus="../recall/secret.txt")
    assert outside.is_valid() is False
    assert "corpus" in outside.errors


def test_a_config_error_does_not_save_the_upload(lab: Lab) -> None:
    upload = SimpleUploadedFile("c.txt", b"some text " * 20)
    form = bound(lab.project, {"corpus_upload": upload}, task="text", steps="0")
    assert config_or_errors(form) == {}
    assert project_corpora(lab.project) == []


def test_rerun_initial_values_reproduce_the_source_run(lab: Lab) -> None:
    source = factories.make_run(lab.project, name="tiny", experiment="sweep")
    initial = RunForm.initial_from_run(source)
    assert initial["experiment"] == "sweep"
    assert (initial["d_model"], initial["n_layer"], initial["steps"]) == (16, 1, 20)
    assert initial["task"] == "induction_head"


def test_rerun_keeps_settings_the_form_does_not_show(lab: Lab) -> None:
    source = factories.make_run(lab.project)
    data = {k: str(v) for k, v in RunForm.initial_from_run(source).items()}
    form = RunForm(data, {}, project=lab.project, base=source.config)
    cfg = config_or_errors(form)
    assert cfg["model"]["d_state"] == 8  # tiny_config's state size, not the default 64
    assert cfg["train"]["eval_every"] == 10
    assert cfg["task"]["num_train"] == 64
    assert RunConfig.from_dict(cfg) == RunConfig.from_dict(source.config)


def test_run_filters_ignore_invalid_values_instead_of_failing(lab: Lab) -> None:
    factories.make_run(lab.project, status=RunStatus.FAILED)
    form = RunFilterForm({"status": "exploded"}, projects=Project.objects.all())
    assert form.filter(Run.objects.all()).count() == 1
