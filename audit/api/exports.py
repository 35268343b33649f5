"""Audit log exports over the API: a streamed download, and background exports with a signed manifest."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from audit.export_services import (
    export_params_parse,
    export_request,
    export_stream_open,
    exports_for_user,
)
from audit.exporters import FORMATS
from audit.models import AuditExport, ExportStatus
from audit.selectors import events_for_user
from organizations.api.base import OrganizationScopedViewSet

FILE_BLOCK = 1024 * 1024


class _IgnoreFormatQuery(DefaultContentNegotiation):
    """Content negotiation that leaves `?format=` alone: here it names the export format, not a DRF renderer."""

    settings = SimpleNamespace(URL_FORMAT_OVERRIDE=None)


def streaming_response(request: HttpRequest, chunks: Iterator[bytes], *, content_type: str) -> StreamingHttpResponse:
    """A streamed answer that never buffers the whole body.

    Django materialises a synchronous iterator served over ASGI (and an asynchronous one over WSGI), so the
    chunks are handed over as the kind the server consumes: under ASGI each next chunk is produced in the
    sync thread (database access stays there) and yielded from an async generator.
    """
    if isinstance(request, ASGIRequest):
        return StreamingHttpResponse(_async_chunks(chunks), content_type=content_type)
    return StreamingHttpResponse(chunks, content_type=content_type)


_DONE = object()


async def _async_chunks(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    step = sync_to_async(lambda: next(chunks, _DONE), thread_sensitive=True)
    while (chunk := await step()) is not _DONE:
        yield chunk


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while block := handle.read(FILE_BLOCK):
            yield block


def _attachment(response: StreamingHttpResponse, filename: str) -> StreamingHttpResponse:
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    response["X-Content-Type-Options"] = "nosniff"
    return response


class AuditStreamViewSet(OrganizationScopedViewSet):
    """`GET /api/v1/orgs/<slug>/audit/export?format=jsonl|csv|ocsf|cef&since=&until=`: the log, streamed."""

    content_negotiation_class = _IgnoreFormatQuery

    def scoped_queryset(self) -> QuerySet:
        """The organization's events (PermissionDenied for members who may not read the log)."""
        return events_for_user(user=self.request.user, organization=self.organization)

    @extend_schema(
        parameters=[
            OpenApiParameter("format", str, enum=list(FORMATS), required=True, description="export format"),
            OpenApiParameter("since", OpenApiTypes.DATETIME, description="from this time on (inclusive, UTC)"),
            OpenApiParameter("until", OpenApiTypes.DATETIME, description="before this time (exclusive, UTC)"),
        ],
        responses={(200, "application/octet-stream"): OpenApiTypes.BINARY},
    )
    def stream(self, request: Request, *args: Any, **kwargs: Any) -> StreamingHttpResponse:
        """Stream the events, oldest first, in constant memory; the export is audited before the first byte."""
        query = request.query_params
        params = export_params_parse(format=query.get("format"), since=query.get("since"), until=query.get("until"))
        export = export_stream_open(actor=request.user, organization=self.organization, params=params)
        response = streaming_response(request._request, export.chunks, content_type=export.content_type)
        return _attachment(response, export.filename)


class AuditExportSerializer(serializers.ModelSerializer):
    """A background export: status, counts and the signed manifest; never the server's file path."""

    download_url = serializers.SerializerMethodField()

    class Meta:
        model = AuditExport
        fields = [
            "id",
            "format",
            "since",
            "until",
            "status",
            "row_count",
            "first_sequence",
            "last_sequence",
            "head_hash",
            "sha256",
            "manifest",
            "signature",
            "error",
            "created_at",
            "finished_at",
            "download_url",
        ]
        read_only_fields = fields

    def get_download_url(self, export: AuditExport) -> str | None:
        """Where the file is downloaded from, once done."""
        if export.status != ExportStatus.DONE:
            return None
        return f"/api/v1/orgs/{self.context['organization'].slug}/audit/exports/{export.pk}/download"


class AuditExportRequestSerializer(serializers.Serializer):
    """What a background export is asked for."""

    format = serializers.ChoiceField(choices=list(FORMATS))
    since = serializers.CharField(required=False, allow_blank=True)
    until = serializers.CharField(required=False, allow_blank=True)


class AuditExportViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrganizationScopedViewSet):
    """Background exports of an organization's log (owners and auditors): request, follow, download."""

    serializer_class = AuditExportSerializer

    def scoped_queryset(self) -> QuerySet:
        """The organization's exports (PermissionDenied for members who may not read the log)."""
        return exports_for_user(user=self.request.user, organization=self.organization)

    def get_serializer_context(self) -> dict[str, Any]:
        """The organization, for download links."""
        return {**super().get_serializer_context(), "organization": self.organization}

    @extend_schema(request=AuditExportRequestSerializer, responses={202: AuditExportSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Queue an export; it runs in the background and is followed at its URL."""
        given = AuditExportRequestSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        params = export_params_parse(
            format=given.validated_data["format"],
            since=given.validated_data.get("since"),
            until=given.validated_data.get("until"),
        )
        export = export_request(actor=request.user, organization=self.organization, params=params)
        return Response(self.get_serializer(export).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"])
    def download(self, request: Request, *args: Any, **kwargs: Any) -> StreamingHttpResponse:
        """The export's file, streamed (404 for another organization's export, 409 while it is not done)."""
        export = self.get_object()
        if export.status != ExportStatus.DONE:
            raise _NotReady(export)
        path = Path(export.file_path)
        if not path.is_file():
            raise NotFound("The export's file is no longer on the server; request a new export.")
        response = streaming_response(
            request._request, _file_blocks(path), content_type=FORMATS[export.format].CONTENT_TYPE
        )
        response["Content-Length"] = str(path.stat().st_size)
        name = f"airlock-audit-{self.organization.slug}-{export.pk}.{FORMATS[export.format].EXTENSION}"
        return _attachment(response, name)


class _NotReady(APIException):
    """409: the export has no file to download (yet, or ever if it failed)."""

    status_code = status.HTTP_409_CONFLICT

    def __init__(self, export: AuditExport) -> None:
        if export.status == ExportStatus.FAILED:
            detail = f"The export failed: {export.error}"
        else:
            detail = f"The export is {export.status}; download it once its status is done."
        super().__init__(detail)
