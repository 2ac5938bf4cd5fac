"""OpenAPI generation details: the error answers every operation can give,
so the published schema states every status code the API really returns."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema

from api.errors import ErrorSerializer

ERRORS = {
    "400": "Invalid input; `fields` names each bad field.",
    "401": "No credentials, or an invalid, expired or revoked token.",
    "403": "The token's scope does not allow this request.",
    "404": "Not found — or not visible to you (the two look the same).",
    "429": "Rate limit exceeded; see the Retry-After header.",
}


class ApiSchema(AutoSchema):
    def get_tags(self) -> list[str]:
        """One tag per resource: ``findings`` for ``/api/v1/findings/{id}/votes/``, so the docs
        group the review flow under the resource it acts on; ``api`` for the root and ``me``."""
        parts = self.path.strip("/").split("/")
        if len(parts) >= 3 and parts[:2] == ["api", "v1"] and parts[2] != "me":
            return [parts[2]]
        return ["api"]

    def _get_response_bodies(self, direction: Any = "response") -> dict[str, Any]:
        responses: dict[str, Any] = super()._get_response_bodies(direction)
        for code, description in ERRORS.items():
            if code not in responses:
                # drf-spectacular's private hook is unannotated and reached through self, so
                # untyped_calls_exclude does not cover the call.
                response = self._get_response_for_code(  # type: ignore[no-untyped-call]
                    ErrorSerializer, code, ["application/json"], direction
                )
                responses[code] = {**response, "description": description}
        return responses


class TokenAuthScheme(OpenApiAuthenticationExtension):
    """Documents :class:`api.auth.TokenAuthentication` as HTTP bearer auth (registered on
    import; this module is loaded as the schema class)."""

    target_class = "api.auth.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "h3l_<prefix>_<secret>",
            "description": "A personal API token from /api/tokens/.",
        }
