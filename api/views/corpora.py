"""Text corpora of a project (for runs of the ``text`` and ``jsonl`` tasks): listed and
uploaded by its members, as the run form does (see experiments/forms.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from drf_spectacular.utils import extend_schema
from rest_framework import status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from api.serializers.corpora import CorpusSerializer, CorpusUploadSerializer
from api.views.common import deny, parse_body
from disclosure import policy
from experiments.actions.corpora import check_upload_corpus
from experiments.models import Project
from experiments.runconfig import corpus_dir, project_corpora


def corpus_row(project: Project, name: str) -> dict[str, Any]:
    path = corpus_dir(project) / name
    return {"name": name, "size": path.stat().st_size, "task_path": name}


if TYPE_CHECKING:
    _ProjectViews = viewsets.GenericViewSet[Project]
else:
    _ProjectViews = object


class ProjectCorporaActions(_ProjectViews):
    """``/api/v1/projects/{slug}/corpora/``, mixed into the projects view set."""

    def _corpus_project(self) -> Project:
        project = self.get_object()
        if not policy.can_submit_run(self.request.user, project):
            raise deny()
        return project

    @extend_schema(methods=["GET"], request=None, responses=CorpusSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request={"multipart/form-data": CorpusUploadSerializer},
        responses={201: CorpusSerializer},
    )
    @action(
        detail=True,
        methods=["get", "post"],
        pagination_class=None,
        parser_classes=[MultiPartParser],
    )
    def corpora(self, request: Request, slug: str) -> Response:
        """GET: the project's uploaded text files, newest first. POST (multipart, field
        ``file``): upload UTF-8 text up to 200 MB; a run names it in ``task.path``
        (``curl -F file=@corpus.txt …``)."""
        project = self._corpus_project()
        if request.method == "GET":
            rows = [corpus_row(project, n) for n in project_corpora(project)]
            return Response(CorpusSerializer(rows, many=True).data)
        upload = parse_body(CorpusUploadSerializer, request)["file"]
        target = check_upload_corpus(project, upload, acting_user=request.user)
        body = CorpusSerializer(corpus_row(project, target.name)).data
        return Response(body, status=status.HTTP_201_CREATED)
