"""Django admin for workspaces: read-only, scoped to the organizations the staff user owns; and for
workspace templates, which owners and template admins add, change and delete through the audited services.

Workspaces are created and commands run only through `workspaces.services`, which audit them, so the
admin offers no add, change or delete for them.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from organizations.models import Organization
from organizations.permissions import has_permission, orgs_where_allowed
from workspaces.models import CommandRun, Workspace, WorkspaceTemplate
from workspaces.services.templates import (
    TEMPLATE_FIELD_ORDER,
    TEMPLATE_FIELDS,
    clean_template_field,
    template_create,
    template_delete,
    template_name_check,
    template_update,
)

MANAGE = "template.manage"


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
    list_filter = ("backend", "status", ("organization", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "owner__username")
    list_select_related = ("organization", "owner")


@admin.register(CommandRun)
class CommandRunAdmin(_ReadOnlyScopedAdmin):
    """Commands run in workspaces and how they ended."""

    list_display = ("command_preview", "workspace", "exit_code", "timed_out", "duration_ms", "started_at")
    list_filter = ("timed_out", "output_truncated", ("organization", admin.RelatedOnlyFieldListFilter))
    search_fields = ("command", "workspace__name")
    list_select_related = ("workspace",)
    date_hierarchy = "started_at"

    @admin.display(description="command")
    def command_preview(self, obj: CommandRun) -> str:
        """The first 80 characters of the command."""
        return obj.command[:80]


def _managed_orgs(request: HttpRequest) -> QuerySet[Organization]:
    return Organization.objects.filter(orgs_where_allowed(request.user, MANAGE))


class WorkspaceTemplateForm(forms.ModelForm):
    """Checks every field with the service's own rules, so a bad value is shown on its field, never a 500."""

    class Meta:
        model = WorkspaceTemplate
        fields = ["organization", *TEMPLATE_FIELD_ORDER]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        for field in TEMPLATE_FIELDS:
            if field in data:
                try:
                    data[field] = clean_template_field(field, data[field])
                except ValidationError as exc:
                    for message in exc.message_dict.get(field, exc.messages):
                        self.add_error(field, message)
        organization = data.get("organization") or getattr(self.instance, "organization", None)
        if organization is not None and "name" in data and not self.has_error("name"):
            try:
                template_name_check(organization=organization, name=data["name"], exclude_pk=self.instance.pk)
            except ValidationError as exc:
                self.add_error("name", exc.message_dict["name"][0])
        return data


@admin.register(WorkspaceTemplate)
class WorkspaceTemplateAdmin(admin.ModelAdmin):
    """Templates: owners and template admins of the row's organization change them; other staff members read."""

    form = WorkspaceTemplateForm
    list_display = ("name", "organization", "backend", "is_enabled", "memory_limit_mb", "updated_at")
    list_filter = ("backend", "is_enabled", ("organization", admin.RelatedOnlyFieldListFilter))
    search_fields = ("name", "description")
    list_select_related = ("organization",)

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Templates of organizations the staff user belongs to (all for superusers)."""
        return super().get_queryset(request).for_user(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Staff members of an organization (or superusers)."""
        return bool(request.user.is_active and request.user.is_staff) and (
            request.user.is_superuser
            or Organization.objects.filter(orgs_where_allowed(request.user, "org.view")).exists()
        )

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Staff members of the row's organization."""
        if obj is not None:
            return bool(request.user.is_staff) and has_permission(request.user, obj.organization, "org.view")
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Owners and template admins of the row's organization."""
        if not (request.user.is_active and request.user.is_staff):
            return False
        if obj is not None:
            return has_permission(request.user, obj.organization, MANAGE)
        return _managed_orgs(request).exists()

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Staff who manage templates somewhere."""
        return self.has_change_permission(request)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """As for changes; each deletion goes through the audited service."""
        return self.has_change_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """No bulk delete: each deletion is audited on its own."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def get_readonly_fields(self, request: HttpRequest, obj: WorkspaceTemplate | None = None) -> list[str]:
        """The organization is fixed once created."""
        return ["organization"] if obj is not None else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """New templates go only to organizations the staff user manages templates in."""
        if db_field.name == "organization":
            kwargs["queryset"] = _managed_orgs(request)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def delete_model(self, request: HttpRequest, obj: WorkspaceTemplate) -> None:
        """Delete through the audited service."""
        template_delete(actor=request.user, template=obj)

    def save_model(
        self, request: HttpRequest, obj: WorkspaceTemplate, form: WorkspaceTemplateForm, change: bool
    ) -> None:
        """Create or change through the services, so that every change is audited."""
        data = {field: form.cleaned_data[field] for field in TEMPLATE_FIELDS if field in form.cleaned_data}
        if change:
            current = WorkspaceTemplate.objects.select_related("organization").get(pk=obj.pk)
            saved = template_update(actor=request.user, template=current, **data)
        else:
            saved = template_create(
                actor=request.user,
                organization=form.cleaned_data["organization"],
                name=data.pop("name"),
                description=data.pop("description"),
                backend=data.pop("backend"),
                **data,
            )
        obj.pk = saved.pk
        obj.refresh_from_db()
