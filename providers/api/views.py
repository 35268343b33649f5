"""API of an organization's providers and models: owners write, auditors read, members list usable models.

Every write goes through `providers.services` (audited); the key is accepted on write and never returned.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response

from organizations.api.base import OrganizationScopedViewSet
from organizations.permissions import has_permission, role_names
from providers.api.serializers import (
    AccessSerializer,
    CheckRequestSerializer,
    LanguageModelSerializer,
    ModelWriteSerializer,
    ProviderSerializer,
    ProviderWriteSerializer,
)
from providers.checks import provider_check
from providers.models import LanguageModel, Provider
from providers.selectors import (
    access_grantee,
    model_access_grants,
    models_visible_to,
    providers_for_user,
)
from providers.services import (
    model_create,
    model_delete,
    model_grant_access,
    model_revoke_access,
    model_set_default,
    model_update,
    provider_create,
    provider_delete,
    provider_update,
)

WRITE_ACTIONS = frozenset({"create", "update", "partial_update", "destroy", "check", "default", "access"})


class _OwnerWrites:
    """Writes need the owner role (403 naming it) before any input is read."""

    manage_action = "model.manage"

    def check_write(self, request: Request) -> None:
        """403 naming the role when a non-owner tries to write."""
        if self.action in WRITE_ACTIONS and request.method != "GET":  # type: ignore[attr-defined]
            if not has_permission(request.user, self.organization, self.manage_action):  # type: ignore[attr-defined]
                raise PermissionDenied(
                    f"Changing this needs one of the roles {role_names(self.manage_action)} "
                    f"in {self.organization.slug}."  # type: ignore[attr-defined]
                )


def _model_in_org(organization: Any, model_id: Any, field: str) -> LanguageModel | None:
    """A model of the organization by id, for a reference in a request body; 400 naming the field otherwise."""
    if model_id is None:
        return None
    model = LanguageModel.objects.filter(organization=organization, pk=model_id).first()
    if model is None:
        raise ValidationError({field: f"No model with id {model_id} in {organization.slug}: pick one of its models."})
    return model


class LanguageModelViewSet(
    _OwnerWrites,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    OrganizationScopedViewSet,
):
    """The models an organization offers: members list them (`can_use`), owners change them."""

    serializer_class = LanguageModelSerializer
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        """Resolve the organization, then refuse writes by non-owners."""
        super().initial(request, *args, **kwargs)
        self.check_write(request)

    def scoped_queryset(self) -> QuerySet:
        """Models of this organization the user may see, with `usable` computed in the same query."""
        return models_visible_to(user=self.request.user, organization=self.organization)

    def _answer(self, model: LanguageModel, code: int = status.HTTP_200_OK) -> Response:
        fresh = self.get_queryset().get(pk=model.pk)
        return Response(LanguageModelSerializer(fresh).data, status=code)

    def _fields(self, data: dict[str, Any]) -> dict[str, Any]:
        fields = dict(data)
        if "fallback" in fields:
            fields["fallback"] = _model_in_org(self.organization, fields["fallback"], "fallback")
        return fields

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Offer a model of one of the organization's providers (owners)."""
        payload = ModelWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        fields = self._fields(payload.validated_data)
        provider_id = fields.pop("provider", None)
        provider = Provider.objects.filter(organization=self.organization, pk=provider_id).first()
        if provider is None:
            raise ValidationError({"provider": f"Give the id of one of {self.organization.slug}'s providers."})
        missing = [name for name in ("identifier", "context_limit") if name not in fields]
        if missing:
            raise ValidationError({name: "This field is required." for name in missing})
        model = model_create(
            actor=request.user,
            organization=self.organization,
            provider=provider,
            identifier=fields.pop("identifier"),
            display_name=fields.pop("display_name", ""),
            context_limit=fields.pop("context_limit"),
            is_default=fields.pop("is_default", False),
            **fields,
        )
        return self._answer(model, status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a model's settings (owners); `is_default: true` stars it."""
        model = self.get_object()
        payload = ModelWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        fields = self._fields(payload.validated_data)
        if "provider" in fields:
            raise ValidationError({"provider": "A model's provider cannot change: create the model on the other one."})
        make_default = fields.pop("is_default", None)
        if make_default is False and model.is_default:
            raise ValidationError({"is_default": "Star another model instead: there is always one default."})
        model = model_update(actor=request.user, model=model, **fields)
        if make_default:
            model = model_set_default(actor=request.user, model=model)
        return self._answer(model)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete a model no session uses (owners); otherwise 400 "disable it instead"."""
        model_delete(actor=request.user, model=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def default(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Make this model the organization's default (owners)."""
        model = model_set_default(actor=request.user, model=self.get_object())
        return self._answer(model)

    @action(detail=True, methods=["get", "post", "delete"])
    def access(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Who may use a restricted model (GET: owners and auditors); POST grants, DELETE revokes (owners)."""
        model = self.get_object()
        if request.method == "GET":
            if not has_permission(request.user, self.organization, "provider.view"):
                raise PermissionDenied(
                    f"Viewing model access needs one of the roles {role_names('provider.view')} "
                    f"in {self.organization.slug}."
                )
            return Response({"restricted_access": model.restricted_access, **model_access_grants(model=model)})
        payload = AccessSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        who = access_grantee(
            model=model,
            revoking=request.method == "DELETE",
            user=payload.validated_data.get("user"),
            group=payload.validated_data.get("group"),
        )
        change = model_grant_access if request.method == "POST" else model_revoke_access
        change(actor=request.user, model=model, **who)
        return Response({"restricted_access": model.restricted_access, **model_access_grants(model=model)})


class ProviderViewSet(
    _OwnerWrites,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    OrganizationScopedViewSet,
):
    """An organization's LLM providers: owners and auditors read, owners write; never any key."""

    serializer_class = ProviderSerializer
    lookup_value_regex = "[0-9]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    manage_action = "provider.manage"

    def initial(self, request: Any, *args: Any, **kwargs: Any) -> None:
        """Members without the owner or auditor role get 403 naming the roles that may look; writes need owner."""
        super().initial(request, *args, **kwargs)
        if not has_permission(request.user, self.organization, "provider.view"):
            raise PermissionDenied(
                f"Viewing providers needs one of the roles {role_names('provider.view')} in {self.organization.slug}."
            )
        self.check_write(request)

    def scoped_queryset(self) -> QuerySet:
        """Providers of this organization the user may see."""
        return providers_for_user(user=self.request.user, organization=self.organization)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Add a provider (owners); `api_key` is stored encrypted and never returned."""
        payload = ProviderWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        fields = dict(payload.validated_data)
        fields.pop("clear_api_key", None)
        if "kind" not in fields:
            raise ValidationError({"kind": "Give the provider's kind (e.g. openai-compatible, anthropic)."})
        fields["api_key"] = fields.get("api_key") or ""
        provider = provider_create(
            actor=request.user,
            organization=self.organization,
            name=fields.pop("name", ""),
            kind=fields.pop("kind"),
            **fields,
        )
        return Response(ProviderSerializer(provider).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a provider (owners); a new `api_key` replaces the stored one, `clear_api_key` removes it."""
        provider = self.get_object()
        payload = ProviderWriteSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        fields = dict(payload.validated_data)
        if "kind" in fields and fields["kind"] != provider.kind:
            raise ValidationError({"kind": "A provider's kind cannot change: create a new provider instead."})
        fields.pop("kind", None)
        provider = provider_update(actor=request.user, provider=provider, **fields)
        return Response(ProviderSerializer(provider).data)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Delete a provider no model uses (owners)."""
        provider_delete(actor=request.user, provider=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @action(detail=True, methods=["post"])
    def check(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Run the connectivity check (DNS, TCP, TLS, an authenticated call; a model when given), step by step."""
        provider = self.get_object()
        payload = CheckRequestSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        model = None
        if payload.validated_data.get("model") is not None:
            model = LanguageModel.objects.filter(
                organization=self.organization, provider=provider, pk=payload.validated_data["model"]
            ).first()
            if model is None:
                raise ValidationError({"model": f"No model with that id on the provider {provider.name!r}."})
        result = provider_check(actor=request.user, provider=provider, model=model)
        return Response(result.as_dict())
