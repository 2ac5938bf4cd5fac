"""Pages of the experiments app. Thin: parse with a form, ask :mod:`disclosure.policy` for
objects, call one action, render or redirect.

SECURITY: every object and queryset here comes from the policy module; forbidden and missing
both answer 404, so a probe cannot learn which runs or projects exist.
"""

from __future__ import annotations

import logging
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Count, Max, Q, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import cache_control, never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_cookie

from disclosure import policy
from experiments import presenters
from experiments.actions.artifacts import do_record_artifact_download
from experiments.actions.findings import check_record_finding
from experiments.actions.runs import check_submit_analysis, check_submit_run, do_cancel_run
from experiments.dispatch import QUEUE_UNREACHABLE
from experiments.downloads import INLINE_TYPES, stream_artifact
from experiments.forms import (
    REVEALS_BY_KIND,
    TASK_DEFAULTS,
    AnalysisForm,
    CancelRunForm,
    CompareForm,
    FindingForm,
    RunFilterForm,
    RunForm,
)
from experiments.models import ACTIVE_STATUSES, MetricPoint, Project, Run, RunKind, RunStatus
from experiments.storage import ArtifactUnavailable, open_artifact
from h3lab.config import ConfigError

log = logging.getLogger(__name__)
RUNS_PER_PAGE = 50
# A run's large columns, which lists never show.
RUN_BULK_FIELDS = ("config", "result", "traceback")


def _managed_run_or_404(request: HttpRequest, pk: int) -> Run:
    run = policy.get_run_or_404(request.user, pk)
    if not policy.can_manage_run(request.user, run):
        raise Http404("Not found.")
    return run


def _submittable_project_or_404(request: HttpRequest, slug: str) -> Project:
    project = policy.get_project_or_404(request.user, slug)
    if not policy.can_submit_run(request.user, project):
        raise Http404("Not found.")
    return project


def _with_run_counts(projects: QuerySet[Project]) -> QuerySet[Project]:
    active = Q(runs__status__in=ACTIVE_STATUSES)
    return projects.annotate(
        n_runs=Count("runs", distinct=True),
        n_active=Count("runs", filter=active, distinct=True),
        last_run_at=Max("runs__created_at"),
    )


@never_cache
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    user = request.user
    findings = policy.visible_findings(user).select_related("project")[:6]
    if not user.is_authenticated:
        return render(request, "experiments/landing.html", {"findings": findings})
    runs = policy.visible_runs(user).select_related("project", "experiment", "created_by")
    context = {
        "projects": _with_run_counts(policy.visible_projects(user)),
        "recent_runs": runs[:10],
        "active_runs": runs.filter(status__in=ACTIVE_STATUSES)[:10],
        "findings": findings,
    }
    return render(request, "experiments/home.html", context)


@login_required
@require_GET
def project_detail(request: HttpRequest, slug: str) -> HttpResponse:
    project = policy.get_project_or_404(request.user, slug)
    runs = policy.visible_runs(request.user).filter(project=project)
    experiments = project.experiments.annotate(n_runs=Count("runs")).order_by("-created_at")
    context = {
        "project": project,
        "experiments": experiments,
        "runs": runs.select_related("experiment", "created_by")[:20],
        "findings": policy.visible_findings(request.user).filter(project=project)[:20],
        "can_submit": policy.can_submit_run(request.user, project),
        "can_manage_team": policy.can_manage_team(request.user, project),
    }
    return render(request, "experiments/project_detail.html", context)


def _submit(request: HttpRequest, form: RunForm, rerun_of: Run | None) -> HttpResponse | None:
    """Submit the run described by a valid ``form``; None (with field errors) if its config
    does not validate."""
    try:
        run = check_submit_run(
            project=form.project,
            config=form.config(),
            experiment_name=form.cleaned_data["experiment"],
            name=form.cleaned_data["name"],
            queue=form.cleaned_data["queue"],
            rerun_of=rerun_of,
            acting_user=request.user,
        )
    except ConfigError as exc:
        form.add_config_errors(exc)
        return None
    if run.queue_unreachable:
        messages.warning(request, f"Run #{run.pk} is {QUEUE_UNREACHABLE}.")
    else:
        messages.success(request, f"Run #{run.pk} queued on the {run.get_queue_display()} queue.")
    return redirect(run)


@login_required
@require_http_methods(["GET", "POST"])
def run_new(request: HttpRequest, slug: str) -> HttpResponse:
    project = _submittable_project_or_404(request, slug)
    form = RunForm(request.POST or None, request.FILES or None, project=project)
    if form.is_bound and form.is_valid() and (done := _submit(request, form, None)):
        return done
    return _render_run_form(request, form, None)


@login_required
@require_http_methods(["GET", "POST"])
def run_rerun(request: HttpRequest, pk: int) -> HttpResponse:
    source = _managed_run_or_404(request, pk)
    form = RunForm(
        request.POST or None,
        request.FILES or None,
        project=source.project,
        base=source.config,
        initial=RunForm.initial_from_run(source),
    )
    if form.is_bound and form.is_valid() and (done := _submit(request, form, source)):
        return done
    return _render_run_form(request, form, source)


def _render_run_form(request: HttpRequest, form: RunForm, rerun_of: Run | None) -> HttpResponse:
    context = {
        "form": form,
        "project": form.project,
        "rerun_of": rerun_of,
        "task_defaults": TASK_DEFAULTS,
        "estimate": form.estimate(),
    }
    return render(request, "experiments/run_form.html", context)


@login_required
@require_GET
def run_list(request: HttpRequest) -> HttpResponse:
    projects = policy.visible_projects(request.user)
    filters = RunFilterForm(request.GET or None, projects=projects)
    runs = filters.filter(policy.visible_runs(request.user))
    # The list shows no config, result or traceback: not fetched, nor decoded 50 times.
    runs = runs.select_related("project", "experiment", "created_by").defer(*RUN_BULK_FIELDS)
    page = Paginator(runs, RUNS_PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "filters": filters,
        "page": page,
        "query": query.urlencode(),
        "columns": _sort_columns(request, filters.current_sort),
    }
    return render(request, "experiments/run_list.html", context)


RUN_COLUMNS = [
    ("id", "Run", ""),
    ("project", "Project", ""),
    ("experiment", "Experiment", ""),
    ("model", "Model", ""),
    ("task", "Task", ""),
    ("status", "Status", ""),
    ("step", "Step", "num"),
    ("loss", "Loss", "num"),
    ("test_accuracy", "Test acc.", "num"),
    ("submitted", "Submitted", ""),
]


def _sort_columns(request: HttpRequest, current: str) -> list[dict[str, str]]:
    """Each header's link: sort by it ascending, or descending when it is the current sort; the
    other filters are kept, the page is reset."""
    columns = []
    for key, label, css in RUN_COLUMNS:
        query = request.GET.copy()
        query.pop("page", None)
        if current == key:
            query["sort"], aria = f"-{key}", "ascending"
        elif current == f"-{key}" or (not current and key == "submitted"):
            query["sort"], aria = key, "descending"
        else:
            query["sort"], aria = key, "none"
        columns.append({"label": label, "url": f"?{query.urlencode()}", "aria": aria, "css": css})
    return columns


@never_cache
@login_required
@require_GET
def run_detail(request: HttpRequest, pk: int) -> HttpResponse:
    run = policy.get_run_or_404(request.user, pk)
    artifacts = list(run.artifacts.all())
    log_lines, log_source = presenters.run_log_tail(run, artifacts)
    context = {
        "run": run,
        "sections": presenters.config_sections(run.config),
        "artifacts": artifacts,
        "plots": [a for a in artifacts if a.content_type in INLINE_TYPES],
        "log_lines": log_lines,
        "log_source": log_source,
        "can_manage": policy.can_manage_run(request.user, run),
        **_analysis_context(request, run),
    }
    return render(request, "experiments/run_detail.html", context)


def _analysis_context(request: HttpRequest, run: Run) -> dict[str, Any]:
    """The run page's "Analyse this run" card (a succeeded training run, for those who may
    submit runs in its project) and, on an analysis, its source."""
    can_analyse = (
        run.kind == RunKind.TRAIN
        and run.status == RunStatus.SUCCEEDED
        and policy.can_submit_run(request.user, run.project)
    )
    return {"analysis_form": AnalysisForm() if can_analyse else None}


@login_required
@require_POST
def run_analyse(request: HttpRequest, pk: int) -> HttpResponse:
    """Submit an analysis (evaluation, probe, intervention) of a succeeded training run."""
    source = policy.get_run_or_404(request.user, pk)
    if not policy.can_submit_run(request.user, source.project):
        raise Http404("Not found.")
    form = AnalysisForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Analysis not submitted: {_form_errors(form)}")
        return redirect(source)
    try:
        run = check_submit_analysis(
            source=source,
            kind=form.cleaned_data["kind"],
            spec=form.spec(),
            acting_user=request.user,
        )
    except ValidationError as exc:
        messages.error(request, f"Analysis not submitted: {'; '.join(exc.messages)}")
        return redirect(source)
    messages.success(request, f"{run.get_kind_display().capitalize()} of run #{source.pk} queued.")
    return redirect(run)


def _form_errors(form: forms.Form) -> str:
    return "; ".join(
        f"{name}: {' '.join(str(e) for e in errs)}" for name, errs in form.errors.items()
    )


def _int_param(request: HttpRequest, name: str, default: int, low: int, high: int) -> int:
    try:
        value = int(request.GET.get(name, default))
    except ValueError:
        value = default
    return min(high, max(low, value))


# The run page's charts: any recorded metric (``?name=`` repeated), each series cut to
# ``?max_points=`` by min/max-preserving downsampling, plus every metric name for the picker
# and the cursor for progress.json. Same policy lookup as the run page (404 for non-members).
@never_cache
@login_required
@require_GET
def run_series(request: HttpRequest, pk: int) -> JsonResponse:
    runs = policy.visible_runs(request.user).only("id", "project_id")
    run = policy.get_visible_or_404(runs, pk=pk)
    names = request.GET.getlist("name")[:20] or list(presenters.CHART_SERIES)
    max_points = _int_param(
        request,
        "max_points",
        presenters.SERIES_MAX_POINTS,
        presenters.SERIES_MIN_POINTS,
        presenters.SERIES_MAX_POINTS_CAP,
    )
    series, cursor = presenters.named_series([run.pk], names, max_points=max_points)
    payload = {
        "names": presenters.metric_names([run.pk]),
        "series": series.get(run.pk, {}),
        "cursor": cursor,
        "max_points": max_points,
    }
    return JsonResponse(payload)


# The log tail the run page polls while the run is active: the worker's live train.log, then
# the stored encrypted log once the run is final. SECURITY: the file read is the run's own
# folder, named by the primary key of a run the policy returned; nothing from the request
# reaches the path.
@never_cache
@login_required
@require_GET
def run_log(request: HttpRequest, pk: int) -> JsonResponse:
    runs = policy.visible_runs(request.user).only("id", "project_id", "status")
    run = policy.get_visible_or_404(runs, pk=pk)
    lines = _int_param(request, "lines", presenters.LOG_TAIL_LINES, 1, presenters.LIVE_LOG_LINES)
    tail, source = presenters.run_log_tail(run, run.artifacts.all(), lines)
    return JsonResponse({"active": run.is_active, "source": source, "lines": tail or []})


# What the progress JSON reads of a run: the live numbers, not the config or the result.
PROGRESS_FIELDS = (
    "id",
    "project_id",
    "status",
    "attempt",
    "step",
    "total_steps",
    "loss",
    "accuracy",
    "test_accuracy",
    "tokens_per_s",
    "eta_s",
    "heartbeat_at",
    "worker_host",
    "device",
    "started_at",
    "finished_at",
    "error",
)


# Polled every second by every open run page. Conditional: the ETag covers everything the
# payload shows (the worker writes metric points in the same transaction that moves
# ``heartbeat_at``), so an unchanged run answers 304 after one small query, without reading
# metric points or building JSON. private + no-cache: the browser keeps it for the next
# revalidation but asks every time (never a shared cache: runs are team-only).
@cache_control(private=True, no_cache=True)
@vary_on_cookie
@login_required
@require_GET
def run_progress(request: HttpRequest, pk: int) -> HttpResponse:
    runs = policy.visible_runs(request.user).only(*PROGRESS_FIELDS)
    run = policy.get_visible_or_404(runs, pk=pk)
    try:
        after = max(0, int(request.GET.get("after", 0)))
    except ValueError:
        after = 0
    etag = presenters.progress_etag(run, after=after)
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponse(status=304)
    else:
        response = JsonResponse(presenters.progress_payload(run, after=after))
    response["ETag"] = etag
    return response


@login_required
@require_POST
def run_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    run = _managed_run_or_404(request, pk)
    form = CancelRunForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why, and confirm: a cancelled run cannot be resumed.")
        return redirect(run)
    if do_cancel_run(run, reason=form.cleaned_data["reason"], acting_user=request.user):
        messages.success(request, f"Run #{run.pk} cancelled.")
    else:
        messages.info(request, f"Run #{run.pk} had already {run.status}; nothing to cancel.")
    return redirect(run)


@never_cache
@require_GET
def artifact_download(request: HttpRequest, pk: int) -> StreamingHttpResponse:
    # No login_required: artifacts cited by a public finding are public evidence; the policy
    # decides, and answers 404 for everything else.
    artifact = policy.get_artifact_or_404(request.user, pk)
    try:
        chunks = open_artifact(artifact)
    except FileNotFoundError:
        raise Http404("Not found.") from None
    except ArtifactUnavailable as exc:
        return _unavailable(request, artifact, exc)  # type: ignore[return-value]
    do_record_artifact_download(artifact, acting_user=request.user)
    return stream_artifact(artifact, chunks, inline=request.GET.get("inline") == "1")


def _unavailable(request: HttpRequest, artifact: Any, exc: ArtifactUnavailable) -> HttpResponse:
    """A clear page instead of bytes: 410 when the content was destroyed, 503 when the server
    cannot decrypt it (missing or wrong master key, corrupt file). SECURITY: the reason shown
    is generic; the detail goes to the log for the operators."""
    log.error("artifact %s unavailable: %s", artifact.pk, exc)
    status = 410 if exc.reason == "destroyed" else 503
    context = {"artifact": artifact, "reason": exc.reason}
    return render(request, "experiments/artifact_unavailable.html", context, status=status)


def _compared_runs_or_404(request: HttpRequest, ids: list[int]) -> list[Run]:
    found = policy.visible_runs(request.user).filter(pk__in=ids).select_related("project")
    runs = sorted(found, key=lambda r: ids.index(r.pk))
    if len(runs) != len(ids):
        raise Http404("Not found.")  # SECURITY: one invisible id and the whole page is 404
    return runs


@login_required
@require_GET
def run_compare(request: HttpRequest) -> HttpResponse:
    form = CompareForm(request.GET)
    if not form.is_valid():
        messages.info(request, "Select one or more runs to compare.")
        return redirect("runs")
    ids = form.cleaned_data["ids"]
    runs = _compared_runs_or_404(request, ids)
    # The four train/test curves are embedded; the picker fetches any other metric from
    # runs-compare-series, so a page of 12 long runs does not read every series they logged.
    series, _ = presenters.named_series(
        ids, presenters.CHART_SERIES, max_points=presenters.COMPARE_MAX_POINTS
    )
    chart_runs = [{"id": r.pk, "label": f"#{r.pk} {r.name}".strip()} for r in runs]
    context = {
        "runs": runs,
        "rows": presenters.config_diff(runs),
        "summary": presenters.compare_summary(runs),
        "chart_data": {
            "runs": chart_runs,
            "series": series,
            "names": presenters.metric_names(ids),
            "series_url": reverse("runs-compare-series"),
        },
    }
    return render(request, "experiments/run_compare.html", context)


# The compare page's picker: ``?ids=`` (as the page) and ``?name=`` repeated, every run's
# series of those names cut to the compare page's points. 404 when any run is not visible.
@never_cache
@login_required
@require_GET
def run_compare_series(request: HttpRequest) -> JsonResponse:
    form = CompareForm(request.GET)
    if not form.is_valid():
        raise Http404("Not found.")
    ids = form.cleaned_data["ids"]
    _compared_runs_or_404(request, ids)
    names = request.GET.getlist("name")[:20]
    series, _ = presenters.named_series(ids, names, max_points=presenters.COMPARE_MAX_POINTS)
    return JsonResponse({"series": {str(k): v for k, v in series.items()}})


@login_required
@require_http_methods(["GET", "POST"])
def finding_new(request: HttpRequest, pk: int) -> HttpResponse:
    run = _managed_run_or_404(request, pk)
    evidence_runs = policy.visible_runs(request.user).filter(project=run.project)
    form = FindingForm(
        request.POST or None,
        runs=evidence_runs.select_related("experiment"),
        artifacts=policy.visible_artifacts(request.user).filter(run=run),
        metric_names=list(
            MetricPoint.objects.filter(run=run)
            .order_by("name")
            .values_list("name", flat=True)
            .distinct()
        ),
        initial=_finding_initial(run),
    )
    if form.is_bound and form.is_valid():
        try:
            finding = check_record_finding(**form.cleaned_data, acting_user=request.user)
        except ValidationError as exc:
            form.add_error(None, exc)
        else:
            messages.success(request, "Finding recorded as a private team draft.")
            return redirect(reverse("finding", args=[finding.pk]))
    return render(request, "experiments/finding_form.html", {"form": form, "run": run})


def _finding_initial(run: Run) -> dict[str, Any]:
    """A finding recorded from an analysis cites it, its source and all its outputs, and says
    what such an analysis reveals; from a training run, the run alone."""
    if run.kind == RunKind.TRAIN:
        return {"runs": [run.pk]}
    return {
        "runs": [run.pk, *([run.source_id] if run.source_id else [])],
        "artifacts": [a.pk for a in run.artifacts.all() if not a.is_shredded],
        "reveals": REVEALS_BY_KIND.get(run.kind, ""),
    }
