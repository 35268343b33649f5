"""Admin of SIEM destinations: read-only, scoped to organizations the staff user owns; the secret never shows.

Changes go through the API or `manage.py audit destinations`, which validate and audit them.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audit.forwarding.selectors import with_lag
from audit.models import AuditDestination
from organizations.models import Organization
from organizations.permissions import orgs_where_allowed


@admin.register(AuditDestination)
class AuditDestinationAdmin(admin.ModelAdmin):
    """Destinations with their cursor, lag and last error."""

    list_display = ("name", "organization", "kind", "enabled", "delivered_sequence", "lag", "last_error_short")
    list_filter = (("organization", admin.RelatedOnlyFieldListFilter), "kind", "enabled")
    search_fields = ("name", "url", "host")
    list_select_related = ("organization",)
    exclude = ("secret_encrypted", "client_key_encrypted")

    def get_queryset(self, request: HttpRequest) -> QuerySet[AuditDestination]:
        """Destinations of the organizations the staff user owns, annotated with lag."""
        allowed = Organization.objects.filter(orgs_where_allowed(request.user, "org.manage")).values("pk")
        return with_lag(super().get_queryset(request).filter(organization__in=allowed))

    @admin.display(description="lag", ordering="lag")
    def lag(self, obj: AuditDestination) -> int:
        """Events written but not yet acknowledged."""
        return int(getattr(obj, "lag", 0) or 0)

    @admin.display(description="last error")
    def last_error_short(self, obj: AuditDestination) -> str:
        """The last delivery error, cut short."""
        return (obj.last_error or "")[:120]

    def get_readonly_fields(self, request: HttpRequest, obj: AuditDestination | None = None) -> list[str]:
        """Every field is read-only here."""
        return [f.name for f in self.model._meta.fields if f.name not in self.exclude]

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Add destinations through the API or the CLI (validated and audited)."""
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Change destinations through the API or the CLI (validated and audited)."""
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Remove destinations through the API or the CLI (audited)."""
        return False
