"""Read API of an organization's models and providers."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins
from rest_framework.exceptions import PermissionDenied

from organizations.api.base import OrganizationScopedViewSet
from organizations.permissions import has_permission
from providers.api.serializers import LanguageModelSerializer, ProviderSerializer
from providers.selectors import can_use_models, models_visible_to, providers_for_user, role_names


class LanguageModelViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrganizationScopedViewSet):
    """The models an organization offers: every member sees them; `can_use` says whether they may run agents."""

    serializer_class = LanguageModelSerializer
    lookup_value_regex = "[0-9]+"

    def scoped_queryset(self) -> QuerySet:
        """Models of this organization the user may see."""
        return models_visible_to(user=self.request.user, organization=self.organization)

    def get_serializer_context(self) -> dict[str, Any]:
        """Decide `can_use` once for the whole list, not per row."""
        context = super().get_serializer_context()
        context["can_use"] = can_use_models(user=self.request.user, organization=self.organization)
        return context


class ProviderViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrganizationScopedViewSet):
    """An organization's LLM providers, for owners and auditors; never any key."""

    serializer_class = ProviderSerializer
    lookup_value_regex = "[0-9]+"

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        """Members without the owner or auditor role get 403 naming the roles that may look."""
        super().initial(request, *args, **kwargs)
        if not has_permission(request.user, self.organization, "provider.view"):
            raise PermissionDenied(
                f"Viewing providers needs one of the roles {role_names('provider.view')} in {self.organization.slug}."
            )

    def scoped_queryset(self) -> QuerySet:
        """Providers of this organization the user may see."""
        return providers_for_user(user=self.request.user, organization=self.organization)
