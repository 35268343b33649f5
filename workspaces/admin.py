"""Django admin for workspaces: read-only, scoped to the organizations the staff user owns.

Workspaces are created and commands run only through `workspaces.services`, which audit them, so the
admin offers no add, change or delete.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from workspaces.models import CommandRun, Workspace


class _ReadOnlyScopedAdmin(admin.ModelAdmin):
    """Shows rows of the organizations where the user is an owner (all for superusers); never writes."""

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.for_user(request.user, "org.manage")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Workspace)
class WorkspaceAdmin(_ReadOnlyScopedAdmin):
    """Workspaces, with their directory and owner."""

    list_display = ("name", "organization", "owner", "backend", "status", "created_at")
    list_filter = ("backend", "status", "organization")
    search_fields = ("name", "owner__username")
    list_select_related = ("organization", "owner")


@admin.register(CommandRun)
class CommandRunAdmin(_ReadOnlyScopedAdmin):
    """Commands run in workspaces and how they ended."""

    list_display = ("command_preview", "workspace", "exit_code", "timed_out", "duration_ms", "started_at")
    list_filter = ("timed_out", "output_truncated", "organization")
    search_fields = ("command", "workspace__name")
    list_select_related = ("workspace",)
    date_hierarchy = "started_at"

    @admin.display(description="command")
    def command_preview(self, obj: CommandRun) -> str:
        """The first 80 characters of the command."""
        return obj.command[:80]
