"""A read-only admin for audit events: nobody adds, changes or deletes one here."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.models import AuditEvent
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
