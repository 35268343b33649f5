"""Audit API routes: exports (a streamed download, and background exports with a signed manifest)."""

from django.urls import path, re_path

from audit.api.exports import AuditExportViewSet, AuditStreamViewSet

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"

urlpatterns = [
    path(
        "orgs/<slug:org_slug>/audit/export", AuditStreamViewSet.as_view({"get": "stream"}), name="audit-export-stream"
    ),
    path(
        "orgs/<slug:org_slug>/audit/exports/",
        AuditExportViewSet.as_view({"get": "list", "post": "create"}),
        name="audit-export-list",
    ),
    re_path(
        rf"^orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/audit/exports/(?P<pk>{_UUID})/$",
        AuditExportViewSet.as_view({"get": "retrieve"}),
        name="audit-export-detail",
    ),
    re_path(
        rf"^orgs/(?P<org_slug>[-a-zA-Z0-9_]+)/audit/exports/(?P<pk>{_UUID})/download/?$",
        AuditExportViewSet.as_view({"get": "download"}),
        name="audit-export-download",
    ),
]
