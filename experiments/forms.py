"""Forms of the experiments web UI: they parse and validate input; views act on it.

The run form is a thin layer over :func:`experiments.runconfig.build_run_config` (which the API
calls too): it turns the fields a researcher edits into config overrides, and maps the config's
validation errors (dotted keys such as ``train.steps``) back onto the fields that caused them, so
every bad input is a field error.
"""

from __future__ import annotations

import codecs
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from django import forms
from django.core.files.uploadedfile import UploadedFile
from django.db.models import F, QuerySet
from django.utils.text import slugify

from experiments.inputs import MAX_BODY_CHARS, MAX_ID, MAX_SEED, MAX_TITLE_CHARS, parse_id
from experiments.models import Artifact, Project, Queue, Reveals, Run, RunKind, RunStatus
from experiments.presets import PRESETS, preset_for
from experiments.runconfig import (
    MAX_D_MODEL,
    MAX_LAYERS,
    MAX_VOCAB,
    build_run_config,
    corpus_dir,
    project_corpora,
    resource_errors,
)
from h3lab.config import ConfigError
from h3lab.estimate import Estimate, estimate

PRESET_CHOICES = [
    ("h3", "H3"),
    ("attention", "Attention"),
    ("hybrid", "Hybrid (H3 + attention)"),
    ("s4d", "S4D only"),
    ("gss", "GSS (gated state spaces)"),
    ("shift", "Shift only"),
]
TASK_CHOICES = [
    ("induction_head", "Induction head"),
    ("associative_recall", "Associative recall"),
    ("induction_head_safari", "Induction head (paper's task, safari semantics)"),
    ("associative_recall_safari", "Associative recall (paper's task, safari semantics)"),
    ("text", "Language modeling on a text file"),
]
FILE_TASKS = ("text", "jsonl")
# What the form's JavaScript sets when the task or model changes (fields the researcher has
# edited stay as they are; the submitted values are what count): task → model → field values,
# with "" for every model without a preset of its own. Tasks with a quick-start preset
# (experiments/presets.py, measured to learn within a minute or two on a 2-core CPU) get all its
# fields and its label; the others the H3 paper's synthetic sizes.
FieldValues = dict[str, int | float | str]
TASK_DEFAULTS: dict[str, dict[str, FieldValues]] = {
    "induction_head": {"": {"vocab_size": 20, "seq_len": 30}},
    "associative_recall": {"": {"vocab_size": 20, "seq_len": 40}},
    "induction_head_safari": {"": {"vocab_size": 20, "seq_len": 30}},
    "associative_recall_safari": {"": {"vocab_size": 10, "seq_len": 20}},
    "text": {"": {"vocab_size": 256, "seq_len": 128}},
}
for _preset in PRESETS:
    _by_model = TASK_DEFAULTS.setdefault(_preset.task, {})
    _values: FieldValues = {**_preset.fields(), "label": _preset.label}
    _by_model[_preset.model] = _values
    if _preset.model == "h3":  # other models start from H3's values, labelled as such
        _by_model[""] = {**_values, "label": f"{_preset.label} (measured with H3)"}
DEFAULT_TASK = "associative_recall"
# The fresh form's values: the default task's H3 quick-start preset.
DEFAULT_PRESET = next(p for p in PRESETS if (p.task, p.model) == (DEFAULT_TASK, "h3"))
MAX_CORPUS_BYTES = 200 * 1024 * 1024

# Dotted ConfigError keys → the form field that holds the bad value.
CONFIG_FIELD = {
    "preset": "preset",
    "task.name": "task",
    "task.path": "corpus_upload",
    "task.vocab_size": "vocab_size",
    "task.seq_len": "seq_len",
    "task.seed": "seed",
    "model.vocab_size": "vocab_size",
    "model.n_layer": "n_layer",
    "model.d_model": "d_model",
    "model.n_head": "d_model",
    "model.head_dim": "d_model",
    "train.steps": "steps",
    "train.lr": "lr",
    "train.batch_size": "batch_size",
    "train.seed": "seed",
}


def _check_utf8(upload: UploadedFile[bytes]) -> int:
    """Size of a non-empty UTF-8 upload; raises ValidationError otherwise. Decodes in chunks
    so a large corpus is never held in memory at once."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    size = 0
    try:
        for chunk in upload.chunks():
            size += len(chunk)
            decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise forms.ValidationError(
            "This file is not UTF-8 text (invalid byte at position %(pos)s of a chunk).",
            params={"pos": exc.start},
        ) from exc
    finally:
        upload.seek(0)
    if size == 0:
        raise forms.ValidationError("This file is empty.")
    return size


def _bounded(low: int, high: int | None) -> forms.NumberInput:
    attrs = {"min": low} if high is None else {"min": low, "max": high}
    return forms.NumberInput(attrs=attrs)


class RunForm(forms.Form):
    """Submit a training job. ``base`` is the config of the run being repeated: fields the
    form does not show (state size, eval cadence, dataset sizes …) are kept from it; a fresh
    form takes them from the chosen task's quick-start preset (experiments/presets.py)."""

    experiment = forms.CharField(
        max_length=200, initial="default", help_text="Runs are grouped by experiment."
    )
    name = forms.CharField(max_length=200, required=False, label="Run name")
    preset = forms.ChoiceField(choices=PRESET_CHOICES, initial="h3", label="Model")
    task = forms.ChoiceField(
        choices=TASK_CHOICES, initial=DEFAULT_TASK, help_text=DEFAULT_PRESET.label
    )
    corpus_upload = forms.FileField(
        required=False, label="Upload a text file", help_text="UTF-8 text; bytes are the tokens."
    )
    corpus = forms.ChoiceField(required=False, label="…or use an uploaded file")
    # The bounds are build_run_config's (the API's too); the widgets only show them, so that an
    # out-of-range value gets the same message here as through the API.
    vocab_size = forms.IntegerField(
        initial=DEFAULT_PRESET.vocab_size,
        widget=_bounded(1, MAX_VOCAB),
        help_text="Ignored for text (bytes: 256).",
    )
    seq_len = forms.IntegerField(initial=DEFAULT_PRESET.seq_len, label="Sequence length")
    d_model = forms.IntegerField(
        initial=DEFAULT_PRESET.d_model, widget=_bounded(1, MAX_D_MODEL), label="Width (d_model)"
    )
    n_layer = forms.IntegerField(
        initial=DEFAULT_PRESET.n_layer, widget=_bounded(1, MAX_LAYERS), label="Depth (layers)"
    )
    steps = forms.IntegerField(initial=DEFAULT_PRESET.steps)
    lr = forms.FloatField(initial=DEFAULT_PRESET.lr, label="Learning rate")
    batch_size = forms.IntegerField(initial=DEFAULT_PRESET.batch_size)
    seed = forms.IntegerField(
        initial=0,
        widget=_bounded(0, MAX_SEED),
        help_text="Seeds the initialisation, batches and synthetic data.",
    )
    queue = forms.ChoiceField(choices=Queue.choices, initial=Queue.CPU)

    def __init__(
        self, *args: Any, project: Project, base: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.project = project
        self.base = base or {}
        corpora = project_corpora(project)
        cast(forms.ChoiceField, self.fields["corpus"]).choices = [
            ("", "—"),
            *((n, n) for n in corpora),
        ]
        if self.base:
            # A repeated run keeps its own settings: no quick-start claim about them.
            self.fields["task"].help_text = ""
        base_task = self.base.get("task", {}).get("name")
        if base_task and base_task not in dict(TASK_CHOICES):
            # A run submitted through the API with a task the form doesn't offer (jsonl):
            # repeating it keeps that task and its file.
            cast(forms.ChoiceField, self.fields["task"]).choices = [
                *TASK_CHOICES,
                (base_task, base_task),
            ]

    @classmethod
    def initial_from_run(cls, run: Run) -> dict[str, Any]:
        """Form values that reproduce ``run`` (for "Run again with this config")."""
        cfg = run.config
        task, train, model = cfg.get("task", {}), cfg.get("train", {}), cfg.get("model", {})
        path = Path(task.get("path") or "")
        return {
            "experiment": run.experiment.name,
            "name": f"{run.name or f'run {run.pk}'} (again)"[:200],
            "preset": cfg.get("preset", "h3"),
            "task": task.get("name"),
            "corpus": path.name if path.parent == corpus_dir(run.project) else "",
            "vocab_size": task.get("vocab_size"),
            "seq_len": task.get("seq_len"),
            "d_model": model.get("d_model"),
            "n_layer": len(model.get("mixers", ())) or 2,
            "steps": train.get("steps"),
            "lr": train.get("lr"),
            "batch_size": train.get("batch_size"),
            "seed": train.get("seed", 0),
            "queue": run.queue,
        }

    def clean_corpus_upload(self) -> UploadedFile[bytes] | None:
        upload = self.cleaned_data.get("corpus_upload")
        if upload:
            if upload.size and upload.size > MAX_CORPUS_BYTES:
                raise forms.ValidationError("Files up to 200 MB can be uploaded.")
            _check_utf8(upload)
        return upload

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("task") in FILE_TASKS and not self._corpus_given(data):
            self.add_error("corpus_upload", "Upload a text file or choose one uploaded before.")
        return data

    def _corpus_given(self, data: dict[str, Any]) -> bool:
        return bool(data.get("corpus_upload") or data.get("corpus") or self._base_path(data))

    def _base_path(self, data: dict[str, Any]) -> str:
        base_task = self.base.get("task", {})
        same_task = base_task.get("name") == data.get("task")
        return str(base_task.get("path") or "") if same_task else ""

    # --- config --------------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The validated run config as a dict (call after ``is_valid()``); raises ConfigError.

        An uploaded corpus is written to the project's corpus folder only once the rest of the
        config has validated."""
        data = self.cleaned_data
        upload = data.get("corpus_upload")
        target = self._upload_target(upload) if upload else None
        path = str(target) if target else self._chosen_path(data)
        cfg = build_run_config(
            self.project,
            self._overrides(data, path=path),
            base=self._base_for(data),
            n_layer=data["n_layer"],
            d_model=data["d_model"],
            pending_corpus=target,
        )
        # check_submit_run holds the run to its queue's limits too; checking here first keeps
        # a refused run's upload from being written.
        errors = resource_errors(cfg, data["queue"])
        if errors:
            raise ConfigError(errors)
        if upload and target:
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as out:
                for chunk in upload.chunks():
                    out.write(chunk)
        return cfg.to_dict()

    def estimate(self) -> Estimate | None:
        """The cost of the run the form describes: its submitted values, or its initial ones
        on a fresh form; None while they do not make a valid config. Writes nothing."""
        values: dict[str, Any] = {}
        for name in ("preset", "task", "vocab_size", "seq_len", "d_model", "n_layer", "steps"):
            values[name] = self[name].value()
        values.update(lr=self["lr"].value(), batch_size=self["batch_size"].value())
        values["seed"] = self["seed"].value() or 0
        try:
            data = {name: self.fields[name].clean(value) for name, value in values.items()}
            # The corpus's content does not change the cost: let a stand-in pass the check.
            stand_in = corpus_dir(self.project) / ".estimate"
            cfg = build_run_config(
                self.project,
                self._overrides(data, path=str(stand_in)),
                base=self._base_for(data),
                n_layer=data["n_layer"],
                d_model=data["d_model"],
                pending_corpus=stand_in,
            )
        except (forms.ValidationError, ConfigError, KeyError):
            return None
        return estimate(cfg)

    def _base_for(self, data: dict[str, Any]) -> dict[str, Any]:
        """Where the settings the form does not show come from: the repeated run's config, or
        on a fresh form the quick-start preset of the chosen task and model (its weight decay,
        warmup and SSM learning rate, measured together with the fields it fills)."""
        if self.base:
            return self.base
        quick = preset_for(data["task"], data["preset"])
        return quick.hidden() if quick else {}

    @staticmethod
    def _overrides(data: dict[str, Any], *, path: str) -> dict[str, Any]:
        """What the form's fields say, as config sections; the rest comes from ``base``."""
        return {
            "preset": data["preset"],
            "task": {
                "name": data["task"],
                "vocab_size": 256 if data["task"] == "text" else data["vocab_size"],
                "seq_len": data["seq_len"],
                "path": path if data["task"] in FILE_TASKS else "",
                "seed": data["seed"],
            },
            "train": {
                "steps": data["steps"],
                "lr": data["lr"],
                "batch_size": data["batch_size"],
                "seed": data["seed"],
            },
        }

    def _chosen_path(self, data: dict[str, Any]) -> str:
        if data.get("corpus"):
            # SECURITY: the name was validated against the folder's listing (ChoiceField), so
            # it cannot point outside the project's corpus folder.
            return str(corpus_dir(self.project) / data["corpus"])
        return self._base_path(data)

    def _upload_target(self, upload: UploadedFile[bytes]) -> Path:
        # SECURITY: never use the client's file name as a path; keep only a slug of its stem
        # for recognisability, plus a random suffix so uploads never overwrite each other.
        stem = slugify(Path(upload.name or "corpus").stem)[:40] or "corpus"
        return corpus_dir(self.project) / f"{stem}-{secrets.token_hex(4)}.txt"

    def add_config_errors(self, exc: ConfigError) -> None:
        """Attach ConfigError messages to the fields that caused them."""
        for key, message in exc.errors.items():
            if key == "model":
                # LMConfig reports "field: message; field: message" under one key.
                for part in message.split("; "):
                    name, _, text = part.partition(": ")
                    self._add_mapped(f"model.{name}", text or part)
            else:
                self._add_mapped(key, message)

    def _add_mapped(self, key: str, message: str) -> None:
        field = CONFIG_FIELD.get(key)
        if key == "model.n_head":
            message = f"must be divisible by the number of attention heads ({message})"
        if field and field in self.fields:
            if message not in self.errors.get(field, []):  # seed: task.seed and train.seed
                self.add_error(field, message)
        else:
            self.add_error(None, f"{key}: {message}")


# Sortable columns of the runs list: query key → field.
RUN_SORTS = {
    "id": "pk",
    "name": "name",
    "project": "project__name",
    "experiment": "experiment__name",
    "model": "preset",
    "task": "task",
    "status": "status",
    "step": "step",
    "loss": "loss",
    "test_accuracy": "test_accuracy",
    "submitted": "created_at",
}


class RunFilterForm(forms.Form):
    """GET filters of the runs list. Invalid values are ignored, never an error page."""

    project = forms.ModelChoiceField(
        queryset=Project.objects.none(), to_field_name="slug", required=False, empty_label="All"
    )
    status = forms.ChoiceField(choices=[("", "All"), *RunStatus.choices], required=False)
    preset = forms.ChoiceField(choices=[("", "All"), *PRESET_CHOICES], required=False)
    task = forms.ChoiceField(choices=[("", "All"), *TASK_CHOICES], required=False)
    experiment = forms.CharField(max_length=200, required=False)
    q = forms.CharField(max_length=200, required=False, label="Name")
    sort = forms.ChoiceField(
        choices=[("", "newest first")]
        + [(k, k) for k in RUN_SORTS]
        + [(f"-{k}", f"-{k}") for k in RUN_SORTS],
        required=False,
        widget=forms.HiddenInput,
    )

    def __init__(self, *args: Any, projects: QuerySet[Project], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelChoiceField[Project]", self.fields["project"]).queryset = projects
        self.fields["q"].widget.attrs.update(placeholder="run name contains…", type="search")

    def filter(self, runs: QuerySet[Run]) -> QuerySet[Run]:
        if not self.is_valid():
            return runs
        data = self.cleaned_data
        if data["project"]:
            runs = runs.filter(project=data["project"])
        for field in ("status", "preset", "task"):
            if data[field]:
                runs = runs.filter(**{field: data[field]})
        if data["experiment"]:
            runs = runs.filter(experiment__name__icontains=data["experiment"])
        if data["q"]:
            runs = runs.filter(name__icontains=data["q"].strip())
        if data["sort"]:
            key = data["sort"].lstrip("-")
            column = F(RUN_SORTS[key])
            order = (
                column.desc(nulls_last=True)
                if data["sort"][0] == "-"
                else column.asc(nulls_last=True)
            )
            runs = runs.order_by(order, "-pk")
        return runs

    @property
    def current_sort(self) -> str:
        return str(self.cleaned_data.get("sort") or "") if self.is_valid() else ""


class RunIdsField(forms.Field):
    """A repeated ``ids`` query parameter as a list of distinct run ids."""

    widget = forms.MultipleHiddenInput

    def to_python(self, value: Any) -> list[int]:
        ids = [parse_id(v) for v in value or ()]
        if None in ids:
            raise forms.ValidationError(f"Run ids must be whole numbers from 1 to {MAX_ID}.")
        return list(dict.fromkeys(i for i in ids if i is not None))


class CompareForm(forms.Form):
    ids = RunIdsField()
    MAX_RUNS = 12

    def clean_ids(self) -> list[int]:
        ids: list[int] = self.cleaned_data["ids"]
        if not 1 <= len(ids) <= self.MAX_RUNS:
            raise forms.ValidationError(f"Choose between 1 and {self.MAX_RUNS} runs.")
        return ids


if TYPE_CHECKING:
    _RunChoices = forms.ModelMultipleChoiceField[Run]
    _ArtifactChoices = forms.ModelMultipleChoiceField[Artifact]
else:  # Django's form fields are not subscriptable at runtime
    _RunChoices = _ArtifactChoices = forms.ModelMultipleChoiceField


class RunChoiceField(_RunChoices):
    def label_from_instance(self, obj: Run) -> str:
        return f"#{obj.pk} {obj.name or obj.experiment.name} · {obj.preset} · {obj.status}"


class ArtifactChoiceField(_ArtifactChoices):
    def label_from_instance(self, obj: Artifact) -> str:
        return f"{obj.name} ({obj.kind})"


class FindingForm(forms.Form):
    """Record a finding from a run, citing runs, artifacts and metric values as evidence
    (the rule is :func:`experiments.actions.check_record_finding`'s; the form offers the
    project's runs, and this run's artifacts and metric series)."""

    title = forms.CharField(max_length=MAX_TITLE_CHARS)
    body = forms.CharField(
        max_length=MAX_BODY_CHARS,
        widget=forms.Textarea(attrs={"rows": 12}),
        help_text="Markdown. Rendered and sanitized when shown.",
    )
    runs = RunChoiceField(
        queryset=Run.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    artifacts = ArtifactChoiceField(
        queryset=Artifact.objects.none(), required=False, widget=forms.CheckboxSelectMultiple
    )
    metrics = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        label="Metric snapshots",
        help_text="Freezes the latest value of each chosen series of every cited run.",
    )
    reveals = forms.ChoiceField(
        choices=Reveals.choices,
        required=False,
        label="What it reveals",
        help_text="Reviewers weigh dual-use risk by it.",
    )

    def __init__(
        self,
        *args: Any,
        runs: QuerySet[Run],
        artifacts: QuerySet[Artifact],
        metric_names: list[str],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        cast("forms.ModelMultipleChoiceField[Run]", self.fields["runs"]).queryset = runs
        cast(
            "forms.ModelMultipleChoiceField[Artifact]", self.fields["artifacts"]
        ).queryset = artifacts
        cast(forms.ChoiceField, self.fields["metrics"]).choices = [(n, n) for n in metric_names]


# What a finding recorded from an analysis of each kind reveals, until its author says otherwise.
REVEALS_BY_KIND: dict[str, str] = {
    RunKind.EVALUATE: Reveals.EVALUATION,
    RunKind.PROBE: Reveals.MECHANISM,
    RunKind.ABLATION: Reveals.MECHANISM,
    RunKind.PATCHING: Reveals.MECHANISM,
    RunKind.STEERING: Reveals.INTERVENTION,
}


class AnalysisForm(forms.Form):
    """Analyse a finished training run: the kind and its few options
    (:class:`h3lab.analysis.AnalysisSpec` validates them; the options a kind does not use are
    ignored)."""

    kind = forms.ChoiceField(choices=[(k.value, k.label) for k in RunKind if k != RunKind.TRAIN])
    probe = forms.ChoiceField(
        choices=[(k, k) for k in ("induction", "attention", "kernels", "recall")],
        initial="kernels",
        required=False,
        help_text="probe only",
    )
    examples = forms.IntegerField(
        min_value=2,
        max_value=4096,
        initial=64,
        required=False,
        help_text="ablation, patching, steering, mechanism tests",
    )
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0, required=False)
    modes = forms.MultipleChoiceField(
        choices=[(m, m) for m in ("zero", "mean", "resample")],
        initial=["zero", "mean", "resample"],
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="ablation only",
    )
    corruption = forms.ChoiceField(
        choices=[
            ("values", "values: replace the token after each earlier occurrence of the query"),
            ("keys", "keys: swap the query with another key (tests previous-token components)"),
        ],
        initial="values",
        required=False,
        help_text="patching only",
    )
    hook = forms.CharField(
        max_length=100, required=False, help_text="steering only; default: the middle layer"
    )
    coefficients = forms.CharField(
        max_length=200, required=False, initial="0 1 2 4 8", help_text="steering only"
    )

    def clean_coefficients(self) -> list[float]:
        raw = self.cleaned_data.get("coefficients") or ""
        try:
            return [float(c) for c in raw.replace(",", " ").split()]
        except ValueError:
            raise forms.ValidationError("Give numbers separated by spaces.") from None

    def spec(self) -> dict[str, Any]:
        """The options for :func:`experiments.actions.runs.check_submit_analysis`."""
        return {
            k: v for k, v in self.cleaned_data.items() if k != "kind" and v not in (None, "", [])
        }


class CancelRunForm(forms.Form):
    """Cancelling cannot be undone (a cancelled run never resumes): a reason and a confirmation."""

    reason = forms.CharField(max_length=300)
    confirm = forms.BooleanField(label="Stop it now (cannot be resumed)")
