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
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.db.models import Prefetch, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from disclosure import audit, forms, pagerows, policy
from disclosure.actions.agreements import do_accept_agreement
from disclosure.actions.grants import check_give_grant, do_approve_grant, do_revoke_grant
from disclosure.actions.inbox import do_mark_notifications_read
from disclosure.actions.release import check_schedule_release, do_request_release, do_request_review
from disclosure.actions.retraction import do_retract_finding
from disclosure.actions.review import (
    do_assess_finding,
    do_clear_objection,
    do_recuse,
    do_vote,
    do_withdraw_objection,
)
from disclosure.gates import current_rules_query, gate_inputs_from, gate_reasons, on_board
from disclosure.models import (
    AgreementAcceptance,
    AgreementVersion,
    AuditEntry,
    Export,
    ExportKind,
    ExportStatus,
    Grant,
    GrantState,
    Notification,
    ObjectionClearance,
    ReleaseRequest,
    Vote,
)
from disclosure.pagination import CappedPaginator
from disclosure.presenters import evidence_context
from disclosure.revisions import revisions_context
from experiments.markdown import render_markdown
from experiments.models import Finding, FindingStatus, MetricSnapshot, Tier
from experiments.users import Viewer, signed_in

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
    pending = ReleaseRequest.objects.pending().filter(finding=finding).first()
    sees_review = policy.can_see_review(request.user, finding)
    rows = pagerows.read(_page_lists(finding, pending, sees_review))
    return render(
        request,
        "disclosure/finding_detail.html",
        {
            "finding": finding,
            "body_html": render_markdown(finding.body),
            "review": (
                _review_context(request.user, finding, pending, rows) if sees_review else None
            ),
            "decisions": rows["decisions"],
            "can": _abilities(request.user, finding, pending),
            "retract_form": forms.RetractForm(),
            "revisions": revisions_context(request.user, finding),
            "evidence": evidence_context(request.user, finding, snapshots=rows["snapshots"]),
        },
    )


def _page_lists(
    finding: Finding, pending: ReleaseRequest | None, sees_review: bool
) -> dict[str, pagerows.Rows]:
    """The finding page's lists that are read in one statement (``disclosure.pagerows``): its
    decisions and metric snapshots for every reader; for the team, the board and release
    managers also the assessments, recusals and timeline, and with a pending request the
    gate's current rules and the finding's dependencies."""
    lists = {
        "decisions": pagerows.Rows(finding.decisions.all(), related=("decided_by", "policy")),
        "snapshots": pagerows.Rows(
            MetricSnapshot.objects.filter(finding=finding).order_by("run_id", "name")
        ),
    }
    if sees_review:
        lists["assessments"] = pagerows.Rows(finding.assessments.all(), related=("reviewer",))
        lists["recusals"] = pagerows.Rows(finding.recusals.all(), related=("reviewer",))
        lists["timeline"] = pagerows.Rows(
            AuditEntry.objects.filter(finding_id=finding.pk)
            .exclude(action="finding.view")
            .order_by("-id")[:50]
        )
    if sees_review and pending:
        lists["rules"] = pagerows.Rows(current_rules_query(), related=("policy",))
        lists["dependencies"] = pagerows.Rows(finding.depends_on.all())
    return lists


@login_required
@require_GET
def finding_audience(request: HttpRequest, pk: int) -> HttpResponse:
    """Who can read the finding now, and by which route (its team and release managers)."""
    finding = policy.get_finding_or_404(request.user, pk)
    if not policy.can_see_audience(request.user, finding):
        raise Http404("Not found.")
    return render(
        request,
        "disclosure/finding_audience.html",
        {"finding": finding, "audience": policy.audience(finding)},
    )


def _review_context(
    user: Viewer, finding: Finding, pending: ReleaseRequest | None, rows: dict[str, list[Any]]
) -> dict[str, Any]:
    """Assessments, votes and the timeline: for the team, the board and release managers
    (the caller asks ``policy.can_see_review``). Each vote comes with what the viewer may do
    about it (withdraw or vote to clear an objection), decided by the policy."""
    # The clearances of every objection in one query (not one per vote): the template lists
    # them and policy.can_clear_objection reads them. The release gate is decided from the
    # rows read here (votes annotated with the voter's board membership) and those of the
    # page's one statement of lists (assessments, recusals, current rules, dependencies).
    clearances = Prefetch("clearances", ObjectionClearance.objects.select_related("reviewer"))
    votes = (
        list(
            pending.votes.select_related("reviewer", "resolved_by")
            .annotate(on_board=on_board())
            .prefetch_related(clearances)
        )
        if pending
        else []
    )
    assessments, recusals = rows["assessments"], rows["recusals"]
    gate: list[str] = []
    if pending:
        inputs = gate_inputs_from(
            pending,
            rules=rows["rules"],
            assessments=assessments,
            recusals=recusals,
            votes=votes,
            dependencies=rows["dependencies"],
        )
        gate = gate_reasons(pending, finding=finding, inputs=inputs)
    return {
        "assessments": assessments,
        "recusals": recusals,
        "pending": pending,
        "votes": [
            {
                "vote": v,
                "can_withdraw": policy.can_withdraw_objection(user, v),
                "can_clear": policy.can_clear_objection(user, v, finding),
                "clearances": list(v.clearances.all()) if v.kind == "object" else [],
            }
            for v in votes
        ],
        "gate": gate,
        "timeline": rows["timeline"],
    }


def _abilities(user: Viewer, finding: Finding, pending: ReleaseRequest | None) -> dict[str, bool]:
    return {
        "request_review": policy.can_request_review(user, finding),
        "request_release": policy.can_request_release(user, finding) and pending is None,
        "review": policy.can_review(user, finding),
        "vote": policy.can_review(user, finding) and pending is not None,
        "schedule": policy.can_schedule_release(user, finding, pending),
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
        finding,
        reason=form.cleaned_data["reason"],
        destroy_data=destroy,
        destroy_reason=form.cleaned_data["destroy_reason"],
        acting_user=request.user,
    )
    done = " Its evidence files were destroyed." if destroy else ""
    messages.success(
        request, "Finding retracted; everyone who accessed it has been notified." + done
    )
    return redirect(finding)


def _objection_or_404(request: HttpRequest, pk: int) -> tuple[Vote, Finding]:
    vote = get_object_or_404(Vote.objects.select_related("finding__project", "request"), pk=pk)
    return vote, policy.get_finding_or_404(request.user, vote.finding_id)


@login_required
@require_POST
def objection_withdraw(request: HttpRequest, pk: int) -> HttpResponse:
    vote, finding = _objection_or_404(request, pk)
    _require(policy.can_withdraw_objection(request.user, vote))
    form = forms.WithdrawObjectionForm(request.POST)
    reason = form.cleaned_data["reason"] if form.is_valid() else ""
    do_withdraw_objection(vote, reason=reason, acting_user=request.user)
    messages.success(request, "Objection withdrawn.")
    return redirect(finding)


@login_required
@require_POST
def objection_clear(request: HttpRequest, pk: int) -> HttpResponse:
    vote, finding = _objection_or_404(request, pk)
    _require(policy.can_clear_objection(request.user, vote, finding))
    form = forms.ClearObjectionForm(request.POST)
    if not form.is_valid():
        return _invalid(request, form, finding)
    try:
        cleared = do_clear_objection(
            vote, rationale=form.cleaned_data["rationale"], acting_user=request.user
        )
    except ValidationError as err:
        messages.error(request, " ".join(err.messages))
        return redirect(finding)
    messages.success(
        request, "Objection cleared." if cleared else "Your vote to clear the objection counts."
    )
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


def _accepted_current(user_ids: set[int]) -> set[int]:
    """Which of ``user_ids`` accepted the agreement in force (one query)."""
    current = AgreementVersion.objects.current()
    if current is None:
        return set()
    return set(
        AgreementAcceptance.objects.filter(agreement=current, user_id__in=user_ids).values_list(
            "user_id", flat=True
        )
    )


def _grant_rows(user: Viewer, grants: Any) -> list[dict[str, Any]]:
    """Each grant with its state in the shared wording (:class:`GrantState`) and whether the
    viewer may approve it. A group grant reads as accepted when every member accepted."""
    grants = list(grants)
    members = {g.pk: [u.pk for u in g.group.user_set.all()] for g in grants if g.group_id}
    accepted = _accepted_current(
        {g.user_id for g in grants if g.user_id} | {u for ids in members.values() for u in ids}
    )
    now = timezone.now()
    rows = []
    for g, named in zip(grants, grant_rows(user, grants), strict=True):
        ids = members.get(g.pk, [g.user_id])
        state = g.state(accepted=bool(ids) and set(ids) <= accepted, now=now)
        rows.append(
            {
                **named,
                "state": state,
                "revocable": state not in (GrantState.REVOKED, GrantState.EXPIRED),
                "can_approve": policy.can_approve_grant(user, g),
            }
        )
    return rows


@never_cache
@login_required
def grant_list(request: HttpRequest) -> HttpResponse:
    projects = policy.manageable_projects(request.user)
    _require(policy.is_release_manager(request.user) or projects.exists())
    form = _grant_form(request, request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            data = {k: v for k, v in form.cleaned_data.items() if k != "expires_on"}
            grant = check_give_grant(**data, acting_user=request.user)
            messages.success(
                request,
                "Grant recorded; it takes effect once a release manager approves it."
                if grant.state(accepted=True) == GrantState.AWAITING_APPROVAL
                else "Access granted; the grantee has been notified.",
            )
            return redirect("grants")
        except ValidationError as err:
            form.add_error(None, err)
    grants = policy.manageable_grants(request.user).select_related(
        "user", "group", "project", "finding", "agreement", "granted_by"
    )
    return render(
        request,
        "disclosure/grants.html",
        {
            "grants": _grant_rows(request.user, grants.prefetch_related("group__user_set")),
            "form": form,
            "revoke_form": forms.ConfirmedReasonForm(),
            "approval_form": forms.GrantApprovalForm(),
        },
    )


def _managed_grant_or_404(request: HttpRequest, pk: int) -> Grant:
    return policy.get_visible_or_404(policy.manageable_grants(request.user), pk=pk)


@login_required
@require_POST
def grant_revoke(request: HttpRequest, pk: int) -> HttpResponse:
    grant = _managed_grant_or_404(request, pk)
    form = forms.ConfirmedReasonForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Give a reason and confirm to revoke the grant.")
        return redirect("grants")
    do_revoke_grant(grant, reason=form.cleaned_data["reason"], acting_user=request.user)
    messages.success(request, "Grant revoked; it no longer gives access.")
    return redirect("grants")


@login_required
@require_POST
def grant_approve(request: HttpRequest, pk: int) -> HttpResponse:
    grant = _managed_grant_or_404(request, pk)
    _require(policy.can_approve_grant(request.user, grant))
    form = forms.GrantApprovalForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose whether to approve or decline the grant.")
        return redirect("grants")
    approve = form.cleaned_data["decision"] == "approve"
    do_approve_grant(
        grant, approve=approve, note=form.cleaned_data["note"], acting_user=request.user
    )
    messages.success(request, "Grant approved; it gives access now." if approve else "Declined.")
    return redirect("grants")


# --- my access, agreement, inbox -----------------------------------------------------------------


@never_cache
@login_required
def my_access(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:  # @login_required lets no one else in
        raise PermissionDenied
    current = AgreementVersion.objects.current()
    accepted = (
        current is not None
        and AgreementAcceptance.objects.filter(user=request.user, agreement=current).exists()
    )
    grants = Grant.objects.for_user(request.user).select_related("project", "finding", "group")
    now = timezone.now()
    return render(
        request,
        "disclosure/my_access.html",
        {
            "agreement": current,
            "accepted": accepted,
            "grants": [
                {**row, "state": row["grant"].state(accepted=accepted, now=now)}
                for row in grant_rows(request.user, grants.distinct())
            ],
            "copies": Export.objects.filter(
                recipient=request.user, kind=ExportKind.PARTNER, status=ExportStatus.SUCCEEDED
            ).order_by("-finished_at")[:20],
            "form": forms.AcceptAgreementForm(
                initial={"version": current.version if current else 0}
            ),
            "now": timezone.now(),
        },
    )


UNSEEN_FINDING = "a finding you cannot see"


def grant_rows(user: Viewer, grants: Iterable[Grant]) -> list[dict[str, Any]]:
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
        signed_in(request.user), current, ip=audit.client_ip(request), acting_user=request.user
    )
    messages.success(request, f"Agreement v{current.version} accepted.")
    return redirect("my-access")


@never_cache
@login_required
def inbox(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        do_mark_notifications_read(signed_in(request.user), acting_user=request.user)
        return redirect("inbox")
    if not request.user.is_authenticated:  # @login_required lets no one else in
        raise PermissionDenied
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
        {
            "form": form,
            "page": page,
            "rows": rows,
            "seen_by": seen_by,
            "checkpoint": audit.latest_checkpoint(),
        },
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
    # The last row is a signed checkpoint of the whole log (this export's own entry included):
    # `manage.py verify_audit --checkpoint h3lab-audit.csv` later proves history up to it.
    trailer = audit.csv_trailer()
    response = StreamingHttpResponse(_csv(writer, fields, rows, trailer), content_type="text/csv")
    response["Content-Disposition"] = 'attachment; filename="h3lab-audit.csv"'
    return response


REDACTED = "(a finding you are not cleared to read)"


def redact_audit(user: Viewer, entries: Iterable[AuditEntry]) -> list[AuditEntry]:
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


def _csv(writer: Any, header: list[str], rows: Any, trailer: list[str] | None = None) -> Any:
    yield writer.writerow(header)
    for row in rows:
        # SECURITY: neutralise spreadsheet formulas in user-supplied text.
        yield writer.writerow(["'" + c if c[:1] in "=+-@" else c for c in row])
    if trailer is not None:
        yield writer.writerow(trailer)
