"""``/api/v1/`` (the REST API), ``/api/schema/`` (OpenAPI 3, generated from the views),
``/api/docs/`` and ``/api/redoc/`` (browsable docs, served from the drf-spectacular sidecar
package's static files: nothing is fetched from a CDN), and the token pages.

URL names start with ``api-`` and are not namespaced, so the permission matrix
(tests/test_permission_matrix.py) enumerates them with the rest of the site.
"""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from api import pages
from api.views.artifacts import ArtifactViewSet
from api.views.experiments import ExperimentViewSet
from api.views.exports import ExportViewSet
from api.views.findings import FindingViewSet
from api.views.grants import GrantViewSet
from api.views.projects import ProjectViewSet
from api.views.root import MeView, RootView
from api.views.runs import RunViewSet

router = SimpleRouter()
router.register("projects", ProjectViewSet, basename="api-project")
router.register("experiments", ExperimentViewSet, basename="api-experiment")
router.register("runs", RunViewSet, basename="api-run")
router.register("artifacts", ArtifactViewSet, basename="api-artifact")
router.register("findings", FindingViewSet, basename="api-finding")
router.register("grants", GrantViewSet, basename="api-grant")
router.register("exports", ExportViewSet, basename="api-export")

urlpatterns = [
    path("api/v1/", RootView.as_view(), name="api-root"),
    path("api/v1/me/", MeView.as_view(), name="api-me"),
    path("api/v1/", include(router.urls)),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    path("api/tokens/", pages.tokens, name="tokens"),
    path("api/tokens/<int:pk>/revoke/", pages.token_revoke, name="token-revoke"),
]
