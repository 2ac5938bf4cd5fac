"""Disclosure pages. Thin: parse with a form, ask :mod:`disclosure.policy`, call one action,
render or redirect. Every refusal is a 404 (the same as "missing"), every page that can show
restricted content is ``never_cache``, and every read of non-public content is audited."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.core.paginator import Paginator
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from disclosure import audit, forms, policy
from disclosure.actions.agreements import do_accept_agreement
from disclosure.actions.grants import check_give_grant, do_revoke_grant
from disclosure.actions.inbox import do_mark_notifications_read
from disclosure.actions.release import check_schedule_release, do_request_release, do_request_review
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import do_assess_finding, do_recuse, do_resolve_objection, do_vote
from disclosure.gates import gate_reasons
from disclosure.models import (
    AgreementAcceptance,
    AgreementVersion,
    AuditEntry,
    Grant,
    Notification,
    ReleaseRequest,
    Vote,
)
from disclosure.pagination import CappedPaginator
from disclosure.presenters import evidence_context
from disclosure.revisions import revisions_context
from experiments.markdown import render_markdown
from experiments.models import Finding, FindingStatus, Tier

View = Callable[..., HttpResponse]


def _require(allowed: bool) -> None:
    if not allowed:
        raise Http404("Not found.")


def finding_action(check: Callable[[Any, Finding], bool]) -> Callable[[View], View]:
    """POST-only action on a finding the user can see and may act on (else 404)."""

    def decorate(view: View) -> View:
        @wraps(view)
        @login_required
        @require_POST
        def wrapped(request: HttpRequest, pk: int) -> HttpResponse:
            finding = policy.get_finding_or_404(request.user, pk)
            _require(check(request.user, finding))
            try:
                return view(request, finding)
            except ValidationError as err:
                messages.error(request, " ".join(err.messages))
                return redirect(finding)

        return wrapped

    return decorate


def _invalid(request: HttpRequest, form: Any, finding: Finding) -> HttpResponse:
    messages.error(request, "; ".join(f"{k}: {' '.join(v)}" for k, v in form.errors.items()))
    return redirect(finding)


# --- findings ----------------------------------------------------------------------------------


@never_cache
def finding_list(request: HttpRequest) -> HttpResponse:
    findings = policy.visible_findings(request.user).select_related("project")
    tier = request.GET.get("tier", "")
    if tier in {str(t) for t in Tier.values}:
        findings = findings.filter(tier=int(tier))
    if q := request.GET.get("q", "").strip()[:100]:
        findings = findings.filter(title__icontains=q)
    # Two queries: the count (capped, so it does not grow with the data) and the page (findings
    # joined to their project).
    page = CappedPaginator(findings, 50, cap=1000).get_page(request.GET.get("page"))
    return render(
        request,
        "disclosure/finding_list.html",
        {"page": page, "findings": page.object_list, "tiers": Tier.choices, "tier": tier, "q": q},
    )


@never_cache
def finding_detail(request: HttpRequest, pk: int) -> HttpResponse:
    finding, readable = policy.get_finding_or_tombstone_or_404(request.user, pk)
    if not readable:
        return render(request, "disclosure/tombstone.html", {"finding": finding}, status=410)
    if finding.tier < Tier.PUBLIC or finding.is_retracted:
        audit.record(request.user, "finding.view", finding, ip=audit.client_ip(request))
    return render(
        request,
        "disclosure/finding_detail.html",
        {
            "finding": finding,
            "body_html": render_markdown(finding.body),
            "review": _review_context(request.user, finding),
            "decisions": finding.decisions.select_related("decided_by", "policy"),
            "can": _abilities(request.user, finding),
            "revisions": revisions_context(request.user, finding),
            "evidence": evidence_context(request.user, finding),
        },
    )


def _review_context(user: Any, finding: Finding) -> dict[str, Any] | None:
    """Assessments, votes and the timeline: for the team, the board and release managers."""
    if not policy.can_see_review(user, finding):
        return None
    pending = ReleaseRequest.objects.pending().filter(finding=finding).first()
    return {
        "assessments": finding.assessments.select_related("reviewer"),
        "recusals": finding.recusals.select_related("reviewer"),
        "pending": pending,
        "votes": pending.votes.select_related("reviewer", "resolved_by") if pending else [],
        "gate": gate_reasons(pending) if pending else [],
        "timeline": AuditEntry.objects.filter(finding_id=finding.pk)
        .exclude(action="finding.view")
        .order_by("-id")[:50],
    }


def _abilities(user: Any, finding: Finding) -> dict[str, bool]:
    return {
        "request_review": policy.can_request_review(user, finding),
        "request_release": policy.can_request_release(user, finding),
        "review": policy.can_review(user, finding),
        "schedule": policy.can_manage_releases(user, finding.project),
        "retract": policy.can_retract(user, finding),
    }


@finding_action(policy.can_request_review)
def finding_request_review(request: HttpRequest, finding: Finding) -> HttpResponse:
    form = forms.RationaleForm(request.POST)
    form.is_valid()
    do_request_review(
        finding, rationale=form.cleaned_data.get("rationale", ""), acting_user=request.user
    )
    messages.success(request, "Review requested.")
    return redirect(finding)


@finding_action(policy.can_request_release)
def finding_request_release(request: HttpRequest, finding: Finding) -> HttpResponse:
    form = forms.RationaleForm(request.POST)
    form.is_valid()
    do_request_release(
        finding, rationale=form.cleaned_data.get("rationale", ""), acting_user=request.user
    )
    messages.success(request, "Promotion requested; reviewers have been notified.")
    return redirect(finding)


@never_cache
@login_required
def finding_assess(request: HttpRequest, pk: int) -> HttpResponse:
    finding = policy.get_finding_or_404(request.user, pk)
    _require(policy.can_review(request.user, finding))
    form = forms.AssessmentForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        do_assess_finding(finding, **form.cleaned_data, acting_user=request.user)
        messages.success(request, "Assessment recorded.")
        return redirect(finding)
    return render(request, "disclosure/assess.html", {"finding": finding, "form": form})


@finding_action(policy.can_review)
def finding_vote(request: HttpRequest, finding: Finding) -> HttpResponse:
    form = forms.VoteForm(request.POST)
    pending = ReleaseRequest.objects.pending().filter(finding=finding).first()
    if not form.is_valid() or pending is None:
        return _invalid(request, form, finding)
    do_vote(pending, **form.cleaned_data, acting_user=request.user)
    messages.success(request, "Vote recorded.")
    return redirect(finding)


@finding_action(policy.can_review)
def finding_recuse(request: HttpRequest, finding: Finding) -> HttpResponse:
    form = forms.ReasonForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, finding)
    do_recuse(finding, reason=form.cleaned_data["reason"], acting_user=request.user)
    messages.success(request, "You have recused yourself; the finding is no longer shown to you.")
    return redirect("review-queue")


@finding_action(lambda user, f: policy.can_manage_releases(user, f.project))
def finding_schedule(request: HttpRequest, finding: Finding) -> HttpResponse:
    form = forms.ScheduleForm(request.POST)
    pending = ReleaseRequest.objects.pending().filter(finding=finding).first()
    if not form.is_valid() or pending is None:
        return _invalid(request, form, finding)
    check_schedule_release(
        pending, embargo_until=form.cleaned_data["embargo_until"], acting_user=request.user
    )
    messages.success(request, "Release scheduled; the scheduler re-checks every gate then.")
    return redirect(finding)


@finding_action(policy.can_retract)
def finding_retract(request: HttpRequest, finding: Finding) -> HttpResponse:
    form = forms.RetractForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, finding)
    destroy = form.cleaned_data["destroy_data"]
    do_retract_finding(
        finding, reason=form.cleaned_data["reason"], destroy_data=destroy, acting_user=request.user
    )
    done = " Its evidence files were destroyed." if destroy else ""
    messages.success(
        request, "Finding retracted; everyone who accessed it has been notified." + done
    )
    return redirect(finding)


@login_required
@require_POST
def objection_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    vote = get_object_or_404(Vote.objects.select_related("finding__project"), pk=pk)
    finding = policy.get_finding_or_404(request.user, vote.finding_id)
    _require(
        policy.can_manage_releases(request.user, finding.project) or vote.reviewer == request.user
    )
    form = forms.ResolveForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, finding)
    do_resolve_objection(vote, resolution=form.cleaned_data["resolution"], acting_user=request.user)
    messages.success(request, "Objection resolved.")
    return redirect(finding)


# --- review queue ------------------------------------------------------------------------------


@never_cache
@login_required
def review_queue(request: HttpRequest) -> HttpResponse:
    _require(policy.is_reviewer(request.user) or policy.is_release_manager(request.user))
    visible = policy.visible_findings(request.user)
    pending = (
        ReleaseRequest.objects.pending()
        .filter(finding__in=visible.values("pk"))
        .select_related("finding__project")
        .prefetch_related(Prefetch("votes", queryset=Vote.objects.select_related("reviewer")))
        .order_by("requested_at")
    )
    # Findings the board has not assessed yet (the reviewer's own team's work excluded: they
    # cannot review it). Two queries with the pending requests above.
    unassessed = (
        visible.filter(tier__gte=Tier.REVIEW, assessments__isnull=True)
        .exclude(status=FindingStatus.RETRACTED)
        .exclude(project__in=policy.member_projects(request.user).values("pk"))
        .select_related("project")
        .order_by("updated_at")[:100]
    )
    return render(
        request,
        "disclosure/review_queue.html",
        {
            "requests": pending,
            "unassessed": unassessed,
            "can_assess": policy.is_reviewer(request.user),
        },
    )


# --- grants ------------------------------------------------------------------------------------


def _grant_form(request: HttpRequest, data: Any = None) -> forms.GrantForm:
    projects = policy.manageable_projects(request.user)
    findings = policy.visible_findings(request.user).filter(project__in=projects.values("pk"))
    return forms.GrantForm(data, projects=projects, findings=findings)


@never_cache
@login_required
def grant_list(request: HttpRequest) -> HttpResponse:
    projects = policy.manageable_projects(request.user)
    _require(policy.is_release_manager(request.user) or projects.exists())
    form = _grant_form(request, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            data = {k: v for k, v in form.cleaned_data.items() if k != "expires_on"}
            check_give_grant(**data, acting_user=request.user)
            messages.success(request, "Access granted; the grantee has been notified.")
            return redirect("grants")
        except ValidationError as err:
            form.add_error(None, err)
    grants = Grant.objects.filter(project__in=projects) | Grant.objects.filter(
        finding__project__in=projects
    )
    grants = grants.select_related("user", "group", "project", "finding", "agreement")
    return render(
        request, "disclosure/grants.html", {"grants": grants, "form": form, "now": timezone.now()}
    )


@login_required
@require_POST
def grant_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    grant = get_object_or_404(Grant.objects.select_related("project", "finding__project"), pk=pk)
    project = grant.project or grant.finding.project  # type: ignore[union-attr]
    _require(policy.can_manage_releases(request.user, project))
    form = forms.ReasonForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    do_revoke_grant(grant, reason=reason, acting_user=request.user)
    messages.success(request, "Grant revoked; it no longer gives access.")
    return redirect("grants")


# --- my access, agreement, inbox -----------------------------------------------------------------


@never_cache
@login_required
def my_access(request: HttpRequest) -> HttpResponse:
    assert request.user.is_authenticated  # @login_required
    current = AgreementVersion.objects.current()
    accepted = (
        current is not None
        and AgreementAcceptance.objects.filter(user=request.user, agreement=current).exists()
    )
    grants = Grant.objects.for_user(request.user).select_related("project", "finding", "group")
    return render(
        request,
        "disclosure/my_access.html",
        {
            "agreement": current,
            "accepted": accepted,
            "grants": grant_rows(request.user, grants.distinct()),
            "form": forms.AcceptAgreementForm(
                initial={"version": current.version if current else 0}
            ),
            "now": timezone.now(),
        },
    )


UNSEEN_FINDING = "a finding you cannot see"


def grant_rows(user: Any, grants: Iterable[Grant]) -> list[dict[str, Any]]:
    """Grants with their scope named as ``user`` may see it now: a finding grant names its
    finding only while the user can read that finding (one query for the whole list)."""
    grants = list(grants)
    readable = policy.readable_finding_ids(user, (g.finding_id for g in grants))
    return [
        {
            "grant": g,
            "finding_readable": g.finding_id in readable,
            "scope": (
                f"project {g.project}"
                if g.project is not None
                else (g.finding.title if g.finding_id in readable and g.finding else UNSEEN_FINDING)
            ),
        }
        for g in grants
    ]


@login_required
@require_POST
def agreement_accept(request: HttpRequest) -> HttpResponse:
    form = forms.AcceptAgreementForm(request.POST)
    current = AgreementVersion.objects.current()
    # SECURITY: only the version in force can be accepted, so a stale form cannot bind the
    # user to (or unlock access with) an old text.
    if not form.is_valid() or current is None or form.cleaned_data["version"] != current.version:
        messages.error(request, "Tick the box to accept the current agreement.")
        return redirect("my-access")
    do_accept_agreement(
        request.user, current, ip=audit.client_ip(request), acting_user=request.user
    )
    messages.success(request, f"Agreement v{current.version} accepted.")
    return redirect("my-access")


@never_cache
@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        do_mark_notifications_read(request.user, acting_user=request.user)
        return redirect("inbox")
    assert request.user.is_authenticated  # @login_required
    notes = list(Notification.objects.filter(user=request.user).select_related("finding")[:200])
    readable = policy.readable_finding_ids(request.user, (n.finding_id for n in notes))
    rows = [
        {
            "note": n,
            "subject": n.subject_for(readable=n.finding_id in readable),
            "body": n.body if n.finding_id is None or n.finding_id in readable else "",
        }
        for n in notes
    ]
    return render(request, "disclosure/inbox.html", {"rows": rows})


# --- audit -------------------------------------------------------------------------------------


def _audit_entries(request: HttpRequest) -> tuple[forms.AuditFilterForm, QuerySet[AuditEntry]]:
    form = forms.AuditFilterForm(request.GET or None)
    entries = AuditEntry.objects.order_by("-id")
    if form.is_valid():
        data = form.cleaned_data
        if data["actor"]:
            entries = entries.filter(actor_name=data["actor"])
        if data["action"]:
            entries = entries.filter(action__startswith=data["action"])
        if data["finding"]:
            entries = entries.filter(finding_id=data["finding"])
        if data["since"]:
            entries = entries.filter(created_at__date__gte=data["since"])
        if data["until"]:
            entries = entries.filter(created_at__date__lte=data["until"])
    return form, entries


@never_cache
@login_required
def audit_log(request: HttpRequest) -> HttpResponse:
    _require(policy.can_view_audit(request.user))
    form, entries = _audit_entries(request)
    finding_id = form.cleaned_data.get("finding") if form.is_valid() else None
    seen_by = (
        AuditEntry.objects.filter(finding_id=finding_id, action="finding.view")
        .values("actor_name")
        .order_by("actor_name")
        .distinct()
        if finding_id
        else None
    )
    page = Paginator(entries, 100).get_page(request.GET.get("page"))
    rows = redact_audit(request.user, page.object_list)
    return render(
        request,
        "disclosure/audit.html",
        {"form": form, "page": page, "rows": rows, "seen_by": seen_by},
    )


@never_cache
@login_required
def audit_export(request: HttpRequest) -> StreamingHttpResponse:
    _require(policy.can_view_audit(request.user))
    _, entries = _audit_entries(request)
    audit.record(
        request.user,
        "audit.export",
        None,
        new=dict(request.GET.items()),
        ip=audit.client_ip(request),
    )
    fields = [
        "id",
        "created_at",
        "actor_name",
        "action",
        "object_type",
        "object_id",
        "object_repr",
        "finding_id",
        "old",
        "new",
        "ip",
        "prev_hash",
        "hash",
    ]

    class Echo:
        def write(self, value: str) -> str:
            return value

    writer = csv.writer(Echo())
    rows = (
        [str(getattr(e, f)) for f in fields]
        for chunk in _chunks(entries.iterator(chunk_size=2000), 2000)
        for e in redact_audit(request.user, chunk)
    )
    response = StreamingHttpResponse(_csv(writer, fields, rows), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="h3lab-audit.csv"'
    return response


REDACTED = "(a finding you are not cleared to read)"


def redact_audit(user: Any, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
    """The entries as ``user`` may read them: an entry about a finding the user cannot read now
    keeps its action, actor, time and hashes, but not the finding's name or the values changed.
    The rows are copies for display; the log itself stays whole (its hashes cover the
    originals)."""
    entries = list(entries)
    readable = policy.readable_finding_ids(user, (e.finding_id for e in entries))
    for e in entries:
        if e.finding_id is not None and e.finding_id not in readable:
            e.object_repr, e.old, e.new = REDACTED, None, {"redacted": True}
    return entries


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _csv(writer: Any, header: list[str], rows: Any) -> Any:
    yield writer.writerow(header)
    for row in rows:
        # SECURITY: neutralise spreadsheet formulas in user-supplied text.
        yield writer.writerow(["'" + c if c[:1] in "=+-@" else c for c in row])
