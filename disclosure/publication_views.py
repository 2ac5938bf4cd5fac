"""Publication pages: the public signing keys, export requests with live progress, and the
permission-checked bundle download. Thin, like :mod:`disclosure.views`: every decision comes
from :mod:`disclosure.policy`; every refusal of an object is a 404."""

from __future__ import annotations

import logging

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db.models import F
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from disclosure import audit, forms, policy
from disclosure.actions.exports import check_request_export, do_record_export_download
from disclosure.exports.build import open_export, stream_export
from disclosure.exports.rules import ExportRefused
from disclosure.models import ExportKind, SigningKey
from experiments.dispatch import QUEUE_UNREACHABLE
from experiments.models import Finding
from experiments.storage import ArtifactUnavailable

log = logging.getLogger(__name__)


def _require(allowed: bool) -> None:
    if not allowed:
        raise Http404("Not found.")


# --- public keys -------------------------------------------------------------------------------


@require_GET
def key_list(request: HttpRequest) -> HttpResponse:
    return render(request, "disclosure/keys.html", {"keys": SigningKey.objects.all()})


@require_GET
def key_pem(request: HttpRequest, key_id: str) -> HttpResponse:
    key = policy.get_visible_or_404(SigningKey.objects.all(), key_id=key_id)
    response = HttpResponse(key.public_key_pem, content_type="application/x-pem-file")
    response["Content-Disposition"] = f'inline; filename="h3lab-{key.key_id}.pem"'
    response["X-H3lab-Key-Status"] = key.status
    return response


@require_GET
def keys_json(request: HttpRequest) -> JsonResponse:
    keys = [
        {
            "key_id": k.key_id,
            "algorithm": "Ed25519",
            "status": k.status,
            "public_key_pem": k.public_key_pem,
            "created": k.created_at.isoformat(),
            "retired": k.retired_at.isoformat() if k.retired_at else None,
            "revoked": k.revoked_at.isoformat() if k.revoked_at else None,
            "url": request.build_absolute_uri(f"/keys/{k.key_id}.pem"),
        }
        for k in SigningKey.objects.all()
    ]
    response = JsonResponse({"issuer": "h3lab", "keys": keys}, json_dumps_params={"indent": 2})
    response["Access-Control-Allow-Origin"] = "*"
    return response


# --- published bundles (anyone) -----------------------------------------------------------------


@require_GET
def publications(request: HttpRequest) -> HttpResponse:
    """The lab's released bundles, for anyone, with the verification recipe."""
    exports = list(policy.published_exports().order_by("-finished_at", "-pk")[:100])
    titles: dict[int, list[Finding]] = {e.pk: [] for e in exports}
    readable = (
        policy.visible_findings(request.user)
        .filter(exports__in=exports)
        .annotate(export_pk=F("exports__pk"))
        .order_by("pk")
    )
    for finding in readable:
        titles[finding.export_pk].append(finding)
    rows = [{"export": e, "findings": titles[e.pk]} for e in exports]
    return render(
        request,
        "disclosure/publications.html",
        {"rows": rows, "site_url": request.build_absolute_uri("/").rstrip("/")},
    )


@require_GET
def publication_download(request: HttpRequest, pk: int, name: str) -> StreamingHttpResponse:
    export = policy.get_published_export_or_404(pk, name)
    try:
        chunks = open_export(export)
    except (FileNotFoundError, ArtifactUnavailable):
        log.error("published export %s is missing its archive", export.pk)
        raise Http404("Not found.") from None
    return stream_export(export, chunks)


# --- exports -----------------------------------------------------------------------------------


def _may_export(request: HttpRequest) -> bool:
    return policy.manageable_projects(request.user).exists()


@never_cache
@login_required
@require_GET
def export_list(request: HttpRequest) -> HttpResponse:
    may_export = _may_export(request)
    mine = policy.visible_exports(request.user).select_related("recipient", "created_by")[:100]
    _require(may_export or bool(mine))
    context = {
        "exports": mine,
        "may_export": may_export,
        "public_form": forms.PublicExportForm(user=request.user) if may_export else None,
        "partner_form": forms.PartnerExportForm(user=request.user) if may_export else None,
    }
    return render(request, "disclosure/exports.html", context)


def _request(request: HttpRequest, form: forms.ExportForm, kind: str) -> HttpResponse:
    _require(_may_export(request))
    if not form.is_valid():
        errors = "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in form.errors.items())
        messages.error(request, errors)
        return redirect("exports")
    try:
        export = check_request_export(kind=kind, **form.selection(), acting_user=request.user)
    except ExportRefused as refused:
        return render(
            request, "disclosure/export_refused.html", {"blockers": refused.blockers}, status=200
        )
    if export.queue_unreachable:
        messages.warning(request, f"Export #{export.pk} is {QUEUE_UNREACHABLE}.")
    else:
        messages.success(request, f"Export #{export.pk} queued.")
    return redirect("export", pk=export.pk)


@login_required
@require_POST
def export_public(request: HttpRequest) -> HttpResponse:
    form = forms.PublicExportForm(request.POST, user=request.user)
    return _request(request, form, ExportKind.PUBLIC)


@login_required
@require_POST
def export_partner(request: HttpRequest) -> HttpResponse:
    form = forms.PartnerExportForm(request.POST, user=request.user)
    return _request(request, form, ExportKind.PARTNER)


@never_cache
@login_required
@require_GET
def export_detail(request: HttpRequest, pk: int) -> HttpResponse:
    export = policy.get_export_or_404(request.user, pk)
    findings = list(export.findings.select_related("project"))
    # SECURITY: a copy's page names only what its viewer may read now (a revoked or lapsed
    # grant hides the titles on the next request, like every other page).
    readable = policy.readable_finding_ids(request.user, (f.pk for f in findings))
    context = {
        "export": export,
        "findings": [{"finding": f, "readable": f.pk in readable} for f in findings],
        "can_download": policy.can_download_export(request.user, export),
    }
    return render(request, "disclosure/export_detail.html", context)


@never_cache
@login_required
@require_GET
def export_progress(request: HttpRequest, pk: int) -> JsonResponse:
    export = policy.get_export_or_404(request.user, pk)
    return JsonResponse(
        {
            "status": export.status,
            "label": export.get_status_display(),
            "progress": round(export.progress, 3),
            "message": export.message,
            "active": export.is_active,
        }
    )


@never_cache
@login_required
@require_GET
def export_download(request: HttpRequest, pk: int) -> HttpResponse | StreamingHttpResponse:
    export = policy.get_export_or_404(request.user, pk)
    _require(policy.can_download_export(request.user, export))
    try:
        chunks = open_export(export)
    except FileNotFoundError:
        raise Http404("Not found.") from None
    except ArtifactUnavailable as exc:
        log.error("export %s unavailable: %s", export.pk, exc)
        return render(request, "disclosure/export_unavailable.html", {"export": export}, status=503)
    do_record_export_download(export, acting_user=request.user, ip=audit.client_ip(request))
    return stream_export(export, chunks)
