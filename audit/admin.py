"""A read-only admin for audit events: nobody adds, changes or deletes one here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse

from audit.models import AuditEvent
from audit.viewing import audit_viewed_record
from organizations.models import Organization
from organizations.permissions import orgs_where_allowed


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """Browse events; staff who are not superusers see only organizations where they may view the audit log."""

    list_display = ("sequence", "organization", "occurred_at", "action", "outcome", "actor_display", "target_display")
    list_filter = (("organization", admin.RelatedOnlyFieldListFilter), "action", "outcome")
    search_fields = ("action", "actor_display", "target_display", "session_id", "request_id")
    ordering = ("organization", "-sequence")
    list_select_related = ("organization",)
    show_full_result_count = False
    list_per_page = 100

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditEvent]:
        """Events of the organizations where the staff user may view the audit log."""
        allowed = Organization.objects.filter(orgs_where_allowed(request.user, "audit.view")).values("pk")
        return super().get_queryset(request).filter(organization__in=allowed)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        """The list; a read of the log like any other: `audit.viewed` in each organization the page shows."""
        response = super().changelist_view(request, extra_context)
        changelist = (getattr(response, "context_data", None) or {}).get("cl")
        if changelist is not None:
            shown: dict[int, tuple[Organization, int]] = {}
            for event in changelist.result_list:
                organization, count = shown.get(event.organization_id, (event.organization, 0))
                shown[event.organization_id] = (organization, count + 1)
            filters = {name: value for name, value in request.GET.items() if name != "p"}
            for organization, count in shown.values():
                audit_viewed_record(
                    actor=request.user,
                    organization=organization,
                    view="admin.list",
                    filters=filters,
                    page={"page": changelist.page_num, "returned": count},
                )
        return response

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        """One event, read-only; its read is audited as `audit.viewed` in the event's organization."""
        response = super().change_view(request, object_id, form_url, extra_context)
        event = (getattr(response, "context_data", None) or {}).get("original")
        if response.status_code == 200 and isinstance(event, AuditEvent):
            audit_viewed_record(
                actor=request.user, organization=event.organization, view="admin.event", event_id=str(event.pk)
            )
        return response

    def get_readonly_fields(self, request: HttpRequest, obj: AuditEvent | None = None) -> list[str]:
        """Every field is read-only."""
        return [field.name for field in self.model._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Events are written only by `audit.record()`."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Events are never changed."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Events are never deleted here (retention has its own audited path)."""
        return False


import audit.admin_destinations  # noqa: E402, F401 - registers the SIEM destinations admin
