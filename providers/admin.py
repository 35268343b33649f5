"""Django admin for providers and models: writes go through the services, keys are write-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from organizations.models import Organization
from organizations.permissions import has_permission, orgs_where_allowed
from providers.models import LanguageModel, Provider, ProviderKind
from providers.services import (
    model_create,
    model_set_default,
    model_update,
    provider_create,
    provider_update,
    validate_api_key,
    validate_base_url,
    validate_model_identifier,
    validate_provider_name,
)


def _managed_orgs(request: HttpRequest, action: str) -> QuerySet[Organization]:
    return Organization.objects.filter(orgs_where_allowed(request.user, action))


class ProviderForm(forms.ModelForm):
    """The provider form: the key is a write-only field; the stored (encrypted) key is never rendered."""

    new_api_key = forms.CharField(
        label="New API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted; only its last 4 characters are shown again. Leave empty to keep the current key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)
    base_url = forms.CharField(
        required=False, max_length=500, help_text="e.g. http://127.0.0.1:8000/v1 (internal host names are fine)."
    )

    class Meta:
        model = Provider
        fields = ["organization", "name", "kind", "base_url", "is_simulator"]

    def clean(self) -> dict[str, Any]:
        """Check what the service will check, so that mistakes show on the form's fields."""
        data = super().clean()
        organization = data.get("organization") or (self.instance.organization if self.instance.pk else None)
        kind = data.get("kind") or self.instance.kind
        checks: list[tuple[str, Any]] = [("new_api_key", lambda: validate_api_key(data.get("new_api_key") or ""))]
        if organization is not None and data.get("name"):
            checks.append(
                (
                    "name",
                    lambda: validate_provider_name(
                        organization=organization, name=data["name"], exclude_pk=self.instance.pk
                    ),
                )
            )
        if (data.get("base_url") or "").strip() or kind == ProviderKind.OPENAI_COMPATIBLE:
            checks.append(("base_url", lambda: validate_base_url(data.get("base_url") or "")))
        for field, check in checks:
            try:
                check()
            except ValidationError as exc:
                for message in exc.messages:
                    self.add_error(field, message)
        return data


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    """Providers, for owners of their organization; deletion is not offered (models depend on providers)."""

    form = ProviderForm
    list_display = ["name", "organization", "kind", "base_url", "is_simulator", "has_api_key", "api_key_hint"]
    list_filter = ["kind", "is_simulator"]
    search_fields = ["name", "base_url", "organization__slug"]
    readonly_fields = ["api_key_hint", "created_at", "updated_at"]

    def get_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        """The editable fields, then the key's hint; the encrypted column is never part of the form."""
        fields = ["organization", "name", "kind", "base_url", "is_simulator", "new_api_key"]
        if obj is not None:
            fields += ["clear_api_key", "api_key_hint", "created_at", "updated_at"]
        return fields

    def get_readonly_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        """Organization and kind are fixed once created."""
        fixed = ["organization", "kind"] if obj is not None else []
        return fixed + list(self.readonly_fields)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Provider]:
        """Only providers of organizations the admin user owns."""
        return super().get_queryset(request).filter(organization__in=_managed_orgs(request, "provider.manage"))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Offer only organizations the admin user owns."""
        if db_field.name == "organization":
            kwargs["queryset"] = _managed_orgs(request, "provider.manage")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Staff who own an organization (or superusers)."""
        return request.user.is_active and request.user.is_staff and _managed_orgs(request, "provider.manage").exists()

    def has_view_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        """Owners of the provider's organization."""
        if obj is not None:
            return has_permission(request.user, obj.organization, "provider.manage")
        return self.has_module_permission(request)

    has_change_permission = has_view_permission
    has_add_permission = has_module_permission  # type: ignore[assignment]

    def has_delete_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        """Deleting a provider is not offered here: it has no audited service yet."""
        return False

    def save_model(self, request: HttpRequest, obj: Provider, form: ProviderForm, change: bool) -> None:
        """Create or change through the services, so that the change is audited and the key encrypted."""
        data = form.cleaned_data
        if change:
            updated = provider_update(
                actor=request.user,
                provider=Provider.objects.get(pk=obj.pk),
                name=data["name"],
                base_url=data["base_url"],
                is_simulator=data["is_simulator"],
                api_key=data.get("new_api_key") or None,
                clear_api_key=bool(data.get("clear_api_key")),
            )
        else:
            updated = provider_create(
                actor=request.user,
                organization=data["organization"],
                name=data["name"],
                kind=data["kind"],
                base_url=data["base_url"],
                api_key=data.get("new_api_key") or "",
                is_simulator=data["is_simulator"],
            )
        obj.pk = updated.pk
        obj.refresh_from_db()


class LanguageModelForm(forms.ModelForm):
    """The model form; the organization follows from the provider."""

    class Meta:
        model = LanguageModel
        fields = ["provider", "identifier", "display_name", "context_limit", "is_default"]
        help_texts = {"is_default": "To change the default, tick this on the model that should become it."}

    def clean(self) -> dict[str, Any]:
        """Check what the service will check, so that mistakes show on the form's fields."""
        data = super().clean()
        if self.instance.pk is None and data.get("provider") is not None and data.get("identifier"):
            try:
                validate_model_identifier(provider=data["provider"], identifier=data["identifier"])
            except ValidationError as exc:
                for message in exc.messages:
                    self.add_error("identifier", message)
        return data


@admin.register(LanguageModel)
class LanguageModelAdmin(admin.ModelAdmin):
    """Models, for owners of their organization."""

    form = LanguageModelForm
    list_display = ["display_name", "identifier", "organization", "provider", "context_limit", "is_default"]
    list_filter = ["is_default"]
    list_select_related = ["organization", "provider"]
    search_fields = ["identifier", "display_name", "organization__slug"]

    def get_readonly_fields(self, request: HttpRequest, obj: LanguageModel | None = None) -> list[str]:
        """Provider and identifier are fixed once created."""
        return ["provider", "identifier"] if obj is not None else []

    def get_queryset(self, request: HttpRequest) -> QuerySet[LanguageModel]:
        """Only models of organizations the admin user owns."""
        return super().get_queryset(request).filter(organization__in=_managed_orgs(request, "model.manage"))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Offer only providers of organizations the admin user owns."""
        if db_field.name == "provider":
            kwargs["queryset"] = Provider.objects.filter(
                organization__in=_managed_orgs(request, "model.manage")
            ).select_related("organization")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Staff who own an organization (or superusers)."""
        return request.user.is_active and request.user.is_staff and _managed_orgs(request, "model.manage").exists()

    def has_view_permission(self, request: HttpRequest, obj: LanguageModel | None = None) -> bool:
        """Owners of the model's organization."""
        if obj is not None:
            return has_permission(request.user, obj.organization, "model.manage")
        return self.has_module_permission(request)

    has_change_permission = has_view_permission
    has_add_permission = has_module_permission  # type: ignore[assignment]

    def has_delete_permission(self, request: HttpRequest, obj: LanguageModel | None = None) -> bool:
        """Deleting a model is not offered here: sessions refer to it and it has no audited service yet."""
        return False

    def save_model(self, request: HttpRequest, obj: LanguageModel, form: LanguageModelForm, change: bool) -> None:
        """Create or change through the services, so that every change is audited."""
        data = form.cleaned_data
        if change:
            current = LanguageModel.objects.select_related("organization").get(pk=obj.pk)
            updated = model_update(
                actor=request.user,
                model=current,
                display_name=data["display_name"],
                context_limit=data["context_limit"],
            )
            if data["is_default"] and not current.is_default:
                updated = model_set_default(actor=request.user, model=updated)
        else:
            provider = data["provider"]
            updated = model_create(
                actor=request.user,
                organization=provider.organization,
                provider=provider,
                identifier=data["identifier"],
                display_name=data["display_name"],
                context_limit=data["context_limit"],
                is_default=data["is_default"],
            )
        obj.pk = updated.pk
        obj.refresh_from_db()
