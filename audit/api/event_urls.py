"""Audit API routes: events."""

from django.urls import path

from audit.api.events import AuditEventViewSet

urlpatterns = [
    path(
        "orgs/<slug:org_slug>/audit/events/",
        AuditEventViewSet.as_view({"get": "list"}),
        name="audit-event-list",
    ),
    path(
        "orgs/<slug:org_slug>/audit/events/<uuid:pk>/",
        AuditEventViewSet.as_view({"get": "retrieve"}),
        name="audit-event-detail",
    ),
    path(
        "orgs/<slug:org_slug>/audit/sessions/<str:session_id>/timeline/",
        AuditEventViewSet.as_view({"get": "timeline"}),
        name="audit-session-timeline",
    ),
]
