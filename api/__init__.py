"""The REST API (``/api/v1/``), its tokens and its OpenAPI schema.

Thin views over :mod:`experiments.actions` / :mod:`disclosure.actions`; every object and
queryset comes from :mod:`disclosure.policy`.
"""
