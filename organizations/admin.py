"""Django admin for organizations: read-only, for site superusers (changes go through the CLI's audited services)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from organizations.models import Membership, Organization


class SuperuserReadOnlyMixin:
    """Only superusers see these pages, and nobody edits here: every write must be audited by a service."""

    def has_module_permission(self, request: HttpRequest) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(SuperuserReadOnlyMixin, admin.TabularInline):
    """The organization's members with their roles."""

    model = Membership
    fields = ("user", "role_list", "created_at")
    readonly_fields = ("user", "role_list", "created_at")
    extra = 0
    can_delete = False
    show_change_link = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[Membership]:
        return super().get_queryset(request).select_related("user").with_roles()

    @admin.display(description="roles")
    def role_list(self, membership: Membership) -> str:
        """The roles, comma-separated."""
        return ", ".join(membership.roles) or "-"


@admin.register(Organization)
class OrganizationAdmin(SuperuserReadOnlyMixin, admin.ModelAdmin):
    """Organizations with their members (read-only; use `manage.py orgs` and `manage.py roles` to change them)."""

    list_display = ("slug", "name", "member_count", "created_at")
    search_fields = ("slug", "name")
    readonly_fields = ("slug", "name", "created_at")
    inlines = (MembershipInline,)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Organization]:
        return super().get_queryset(request).annotate(member_count=Count("memberships"))

    @admin.display(description="members", ordering="member_count")
    def member_count(self, organization: Organization) -> int:
        """How many members the organization has."""
        return organization.member_count
