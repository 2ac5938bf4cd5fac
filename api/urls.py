"""``/api/v1/`` (the REST API), ``/api/schema/`` (OpenAPI 3, generated from the views),
``/api/docs/`` and ``/api/redoc/`` (browsable docs, served from the drf-spectacular sidecar
package's static files: nothing is fetched from a CDN), and the token pages.

URL names start with ``api-`` and are not namespaced, so the permission matrix
(tests/test_permission_matrix.py) enumerates them with the rest of the site.
"""

from django.urls import include, path
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)
from rest_framework.routers import SimpleRouter

from api import pages
from api.views.artifacts import ArtifactViewSet
from api.views.experiments import ExperimentViewSet
from api.views.exports import ExportViewSet
from api.views.findings import FindingViewSet
from api.views.grants import GrantViewSet
from api.views.projects import ProjectViewSet
from api.views.review import ObjectionViewSet
from api.views.root import MeView, RootView
from api.views.runs import RunViewSet
from web.middleware import CONTENT_SECURITY_POLICY, csp_override

DOCS_POLICY = (
    CONTENT_SECURITY_POLICY.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
    + "; worker-src 'self' blob:"
)

router = SimpleRouter()
router.register("projects", ProjectViewSet, basename="api-project")
router.register("experiments", ExperimentViewSet, basename="api-experiment")
router.register("runs", RunViewSet, basename="api-run")
router.register("artifacts", ArtifactViewSet, basename="api-artifact")
router.register("findings", FindingViewSet, basename="api-finding")
router.register("grants", GrantViewSet, basename="api-grant")
router.register("exports", ExportViewSet, basename="api-export")
router.register("objections", ObjectionViewSet, basename="api-objection")

urlpatterns = [
    path("api/v1/", RootView.as_view(), name="api-root"),
    path("api/v1/me/", MeView.as_view(), name="api-me"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    # Swagger UI's start-up script is served as a file of its own (the split view), so the
    # docs need no inline script; both UIs inject style elements, and Redoc runs its search
    # in a blob: worker.
    path(
        "api/docs/",
        csp_override(DOCS_POLICY)(SpectacularSwaggerSplitView.as_view(url_name="api-schema")),
        name="api-docs",
    ),
    path(
        "api/redoc/",
        csp_override(DOCS_POLICY)(SpectacularRedocView.as_view(url_name="api-schema")),
        name="api-redoc",
    ),
    path("api/tokens/", pages.tokens, name="tokens"),
    path("api/tokens/<int:pk>/revoke/", pages.token_revoke, name="token-revoke"),
]
