"""The audit events API: browse the log, read one event whole, follow a session's timeline.

Owners and auditors only (403 for other members, 404 for non-members and for another organization's
event). Every query of the log is itself audited as `audit.viewed`.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from audit.chain import HASHED_FIELDS
from audit.models import AuditEvent
from audit.selectors import (
    DEFAULT_PAGE_SIZE,
    DEFAULT_TIMELINE_SIZE,
    MAX_PAGE_SIZE,
    MAX_TIMELINE_SIZE,
    events_for_user,
    events_page,
    parse_event_filters,
    parse_page_number,
    session_timeline_page,
)
from audit.viewing import audit_viewed_record
from organizations.api.base import OrganizationScopedViewSet

# What the API shows of an event: the hashed fields (the organization is in the URL) and the chain links.
EVENT_FIELDS = [name for name in HASHED_FIELDS if name != "organization_id"] + ["prev_hash", "hash"]


class AuditEventSerializer(serializers.ModelSerializer):
    """An audit event, every field (the organization is the one in the URL)."""

    organization = serializers.SerializerMethodField()

    class Meta:
        model = AuditEvent
        fields = [*EVENT_FIELDS[:1], "organization", *EVENT_FIELDS[1:]]
        read_only_fields = fields

    def get_organization(self, event: AuditEvent) -> str:
        """The organization's slug (the one in the URL)."""
        organization = self.context.get("organization")
        return organization.slug if organization is not None else str(event.organization_id)


_FILTER_PARAMETERS = [
    OpenApiParameter("since", str, description="ISO 8601 time; events at or after it."),
    OpenApiParameter("until", str, description="ISO 8601 time; events at or before it."),
    OpenApiParameter("actor", str, description="Username or user id (also the agent acting for that user)."),
    OpenApiParameter("action", str, description="Exact action, or a prefix ending in '.' or '*' (model.)."),
    OpenApiParameter("outcome", str, description="success, failure or denied."),
    OpenApiParameter("session", str, description="Agent session id."),
    OpenApiParameter("q", str, description="Free text in action, actor, target, error and data."),
    OpenApiParameter("cursor", int, description="Start below this sequence (next_cursor of the previous page)."),
    OpenApiParameter("limit", int, description=f"Events per page, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})."),
]


class AuditEventViewSet(OrganizationScopedViewSet):
    """An organization's audit events, newest first."""

    serializer_class = AuditEventSerializer
    pagination_class = None

    def scoped_queryset(self) -> QuerySet:
        """The organization's events; PermissionDenied (403) unless the user is an owner or auditor."""
        return events_for_user(user=self.request.user, organization=self.organization)

    @extend_schema(parameters=_FILTER_PARAMETERS)
    def list(self, request: Request, org_slug: str) -> Response:
        """Filtered events, newest first, a page at a time (follow `next_cursor`)."""
        filters = parse_event_filters(request.query_params)
        cursor = parse_page_number("cursor", request.query_params.get("cursor"), default=None, minimum=1)
        limit = parse_page_number(
            "limit", request.query_params.get("limit"), default=DEFAULT_PAGE_SIZE, minimum=1, maximum=MAX_PAGE_SIZE
        )
        page = events_page(
            user=request.user, organization=self.organization, filters=filters, cursor=cursor, limit=limit
        )
        audit_viewed_record(
            actor=request.user,
            organization=self.organization,
            view="events.list",
            filters=filters.used(),
            page={"cursor": cursor, "limit": limit, "returned": len(page.events)},
        )
        return Response(
            {
                "results": AuditEventSerializer(
                    page.events, many=True, context={"organization": self.organization}
                ).data,
                "next_cursor": page.next_cursor,
                "limit": limit,
            }
        )

    def retrieve(self, request: Request, org_slug: str, pk: uuid.UUID) -> Response:
        """One event, whole."""
        event = self.get_object()
        audit_viewed_record(
            actor=request.user, organization=self.organization, view="events.detail", event_id=str(event.pk)
        )
        return Response(AuditEventSerializer(event, context={"organization": self.organization}).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="Only events with a higher sequence (default 0)."),
            OpenApiParameter("limit", int, description=f"At most this many, 1 to {MAX_TIMELINE_SIZE}."),
        ]
    )
    def timeline(self, request: Request, org_slug: str, session_id: str) -> Response:
        """A session's events in the order they happened, from the prompt to each command."""
        _ = self.get_queryset()  # permission first: a member without the role gets 403, not 404
        after = parse_page_number("after", request.query_params.get("after"), default=0, minimum=0)
        limit = parse_page_number(
            "limit",
            request.query_params.get("limit"),
            default=DEFAULT_TIMELINE_SIZE,
            minimum=1,
            maximum=MAX_TIMELINE_SIZE,
        )
        events = session_timeline_page(
            user=request.user, organization=self.organization, session_id=session_id, after=after, limit=limit
        )
        if not events and not after:
            raise Http404("No such session in this organization's audit log.")
        audit_viewed_record(
            actor=request.user,
            organization=self.organization,
            view="sessions.timeline",
            filters={"session": session_id},
            page={"after": after, "limit": limit, "returned": len(events)},
        )
        payload: dict[str, Any] = {
            "session_id": session_id,
            "results": AuditEventSerializer(events, many=True, context={"organization": self.organization}).data,
            "next_after": events[-1].sequence if len(events) == limit else None,
        }
        return Response(payload)
