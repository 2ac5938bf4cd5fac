"""Request middleware: the signed-in user is the current actor of the request's changes."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from disclosure.policy import roles_once_per_request
from experiments.signals import acting_as


class ActingUserMiddleware:
    """Makes ``request.user`` the current actor (:func:`experiments.signals.current_actor`), so
    changes observed through ORM signals — a user added to a group in the admin — are audited
    under the person who made them. Goes after ``AuthenticationMiddleware``."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        via = (
            "admin"
            if path.startswith(reverse("admin:index"))
            else "api"
            if path.startswith("/api/")
            else "web"
        )
        # request.user stays lazy: it is resolved only when a change is recorded.
        with acting_as(request.user, via):
            return self.get_response(request)


class RolesOncePerRequestMiddleware:
    """A user's roles (groups, team projects, delegations, recusals) are read once per request
    and memoized until the response is returned (:func:`disclosure.policy.roles`); never
    across requests, so a revoked membership counts from the next one."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        with roles_once_per_request():
            return self.get_response(request)
