"""Finding pages. Thin: ask the policy, render."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from disclosure import policy
from experiments.markdown import render_markdown


@never_cache
def finding_list(request: HttpRequest) -> HttpResponse:
    findings = policy.visible_findings(request.user).select_related("project")[:100]
    return render(request, "disclosure/finding_list.html", {"findings": findings})


@never_cache
def finding_detail(request: HttpRequest, pk: int) -> HttpResponse:
    finding = policy.get_finding_or_404(request.user, pk)
    return render(
        request,
        "disclosure/finding_detail.html",
        {"finding": finding, "body_html": render_markdown(finding.body)},
    )
