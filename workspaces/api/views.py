"""API of an organization's workspace templates: members read them, owners and template admins change them.

Every write goes through `workspaces.services` (audited).
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from rest_framework import mixins, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from organizations.api.base import OrganizationScopedViewSet
from organizations.permissions import has_permission, role_names
from workspaces.api.serializers import WorkspaceTemplateSerializer, WorkspaceTemplateWriteSerializer
from workspaces.selectors import templates_for_user
from workspaces.services import template_create, template_delete, template_update


class WorkspaceTemplateViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrganizationScopedViewSet):
    """The workspace templates an organization's agents may start."""

    serializer_class = WorkspaceTemplateSerializer
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        """Resolve the organization (404 for non-members), then refuse writes without the role (403 naming it)."""
        super().initial(request, *args, **kwargs)
        if request.method not in ("GET", "HEAD", "OPTIONS") and not has_permission(
            request.user, self.organization, "template.manage"
        ):
            raise PermissionDenied(
                f"Changing templates needs one of the roles {role_names('template.manage')} in "
                f"{self.organization.slug}."
            )

    def scoped_queryset(self) -> QuerySet:
        """Templates of this organization, for its members."""
        return templates_for_user(user=self.request.user, organization=self.organization)

    def _payload(self, request: Request) -> dict[str, Any]:
        payload = WorkspaceTemplateWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        return dict(payload.validated_data)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Add a template (name, description; backend, limits and is_enabled optional)."""
        fields = self._payload(request)
        missing = [name for name in ("name", "description") if name not in fields]
        if missing:
            raise ValidationError({name: "This field is required." for name in missing})
        template = template_create(
            actor=request.user,
            organization=self.organization,
            name=fields.pop("name"),
            description=fields.pop("description"),
            **fields,
        )
        return Response(WorkspaceTemplateSerializer(template).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a template; workspaces already started keep their limits."""
        template = template_update(actor=request.user, template=self.get_object(), **self._payload(request))
        return Response(WorkspaceTemplateSerializer(template).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Remove a template; its running workspaces go on."""
        template_delete(actor=request.user, template=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)
