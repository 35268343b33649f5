"""Django admin for providers and models: owners change them through the services, auditors read; keys write-only."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest

from organizations.models import Organization
from organizations.permissions import has_permission, orgs_where_allowed
from providers.models import LanguageModel, Provider
from providers.services import (
    model_create,
    model_delete,
    model_set_default,
    model_update,
    provider_create,
    provider_delete,
    provider_update,
)
from providers.validation import (
    PRICE_FIELDS,
    clean_base_url,
    clean_model_fields,
    keep_stored_headers,
    shown_headers,
    validate_api_key,
    validate_context_limit,
    validate_extra_headers,
    validate_kind,
    validate_model_identifier,
    validate_provider_config,
    validate_provider_name,
)

PROVIDER_SETTINGS = [
    "base_url",
    "extra_headers",
    "api_version",
    "region",
    "aws_access_key_id",
    "use_ambient_credentials",
]


def _orgs(request: HttpRequest, action: str) -> QuerySet[Organization]:
    return Organization.objects.filter(orgs_where_allowed(request.user, action))


def _report(form: forms.Form, check: Callable[[], Any]) -> Any:
    """Run a service validator; show its errors on the form's fields (or on the form) instead of failing."""
    try:
        return check()
    except ValidationError as exc:
        errors = exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}
        for field, messages in errors.items():
            target = field if field in form.fields else None
            if field == "api_key" and "new_api_key" in form.fields:
                target = "new_api_key"
            for message in messages:
                form.add_error(target, message)
    return None


class _ScopedAdmin(admin.ModelAdmin):
    """Owners of the row's organization change it; auditors (and owners) read it."""

    manage_action = "provider.manage"
    view_action = "provider.view"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        """Only rows of organizations where the admin user may read them."""
        return super().get_queryset(request).filter(organization__in=_orgs(request, self.view_action))

    def has_module_permission(self, request: HttpRequest) -> bool:
        """Staff who own or audit an organization (or superusers)."""
        return request.user.is_active and request.user.is_staff and _orgs(request, self.view_action).exists()

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Owners and auditors of the row's organization."""
        if obj is not None:
            return request.user.is_staff and has_permission(request.user, obj.organization, self.view_action)
        return self.has_module_permission(request)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Owners of the row's organization."""
        if not (request.user.is_active and request.user.is_staff):
            return False
        if obj is not None:
            return has_permission(request.user, obj.organization, self.manage_action)
        return _orgs(request, self.manage_action).exists()

    def has_add_permission(self, request: HttpRequest) -> bool:
        """Staff who own an organization."""
        return self.has_change_permission(request)

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        """No bulk delete: each deletion goes through its audited service."""
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions


class ProviderForm(forms.ModelForm):
    """The provider form: the key is a write-only field; the stored (encrypted) key is never rendered."""

    new_api_key = forms.CharField(
        label="New API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted; only its last 4 characters are shown again. Leave empty to keep the current "
        "key. Bedrock: the AWS secret access key.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored API key", required=False)
    base_url = forms.CharField(
        required=False, max_length=500, help_text="e.g. http://127.0.0.1:8000/v1 (internal host names are fine)."
    )
    extra_headers = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text='JSON object of headers sent on every call, e.g. {"X-Team": "ml"}. Never a credential.',
    )

    class Meta:
        model = Provider
        fields = ["organization", "name", "kind", "is_simulator", "api_version", "region", "aws_access_key_id"]
        fields += ["use_ambient_credentials"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:  # a credential's value shows as "(unchanged)"; sent back so, the service keeps it
            self.initial["extra_headers"] = json.dumps(shown_headers(self.instance.extra_headers))

    def clean_extra_headers(self) -> dict[str, str]:
        """Parse the JSON text; the service checks the names and values."""
        text = (self.cleaned_data.get("extra_headers") or "").strip()
        if not text:
            return {}
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ValidationError('Write the headers as a JSON object, e.g. {"X-Team": "ml"}.') from None

    def clean(self) -> dict[str, Any]:
        """Check what the service will check, so that mistakes show on the form's fields."""
        data = super().clean()
        organization = data.get("organization") or (self.instance.organization if self.instance.pk else None)
        kind = data.get("kind") or self.instance.kind
        if not kind or _report(self, lambda: validate_kind(kind)) is None:
            return data
        if organization is not None and data.get("name"):
            _report(
                self,
                lambda: validate_provider_name(
                    organization=organization, name=data["name"], exclude_pk=self.instance.pk
                ),
            )
        key = _report(self, lambda: validate_api_key(data.get("new_api_key") or ""))
        url = _report(self, lambda: clean_base_url(kind, data.get("base_url") or ""))
        stored = self.instance.extra_headers if self.instance.pk else {}
        _report(self, lambda: validate_extra_headers(keep_stored_headers(data.get("extra_headers"), stored=stored)))
        if self.errors:
            return data
        has_key = bool(key) or (self.instance.has_api_key and not data.get("clear_api_key"))
        _report(
            self,
            lambda: validate_provider_config(
                kind=kind,
                base_url=url or "",
                has_api_key=has_key,
                api_version=(data.get("api_version") or "").strip(),
                region=(data.get("region") or "").strip(),
                aws_access_key_id=(data.get("aws_access_key_id") or "").strip(),
                use_ambient_credentials=bool(data.get("use_ambient_credentials")),
            ),
        )
        return data


@admin.register(Provider)
class ProviderAdmin(_ScopedAdmin):
    """Providers: owners add, change and delete (when no model uses them); auditors read."""

    form = ProviderForm
    list_display = ["name", "organization", "kind", "base_url", "is_simulator", "has_api_key", "api_key_hint"]
    list_filter = ["kind", "is_simulator"]
    search_fields = ["name", "base_url", "organization__slug"]
    readonly_fields = ["api_key_hint", "created_at", "updated_at"]

    def get_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        """The editable fields, then the key's hint; the encrypted column is never part of the form."""
        fields = ["organization", "name", "kind", *PROVIDER_SETTINGS, "is_simulator"]
        if not self.has_change_permission(request, obj):
            shown = ["shown_extra_headers" if field == "extra_headers" else field for field in fields]
            return [*shown, "api_key_hint", "created_at", "updated_at"]
        fields.append("new_api_key")
        if obj is not None:
            fields += ["clear_api_key", "api_key_hint", "created_at", "updated_at"]
        return fields

    @admin.display(description="extra headers")
    def shown_extra_headers(self, obj: Provider) -> str:
        """The extra headers as readers see them: a credential's value as "(unchanged)"."""
        return json.dumps(shown_headers(obj.extra_headers))

    def get_readonly_fields(self, request: HttpRequest, obj: Provider | None = None) -> list[str]:
        """Organization and kind are fixed once created; auditors read everything."""
        if obj is not None and not self.has_change_permission(request, obj):
            return self.get_fields(request, obj)
        fixed = ["organization", "kind"] if obj is not None else []
        return fixed + list(self.readonly_fields)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Offer only organizations the admin user owns."""
        if db_field.name == "organization":
            kwargs["queryset"] = _orgs(request, self.manage_action)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_delete_permission(self, request: HttpRequest, obj: Provider | None = None) -> bool:
        """Owners, for a provider no model uses (provider_delete refuses otherwise)."""
        if obj is None:
            return False
        return self.has_change_permission(request, obj) and not obj.models.exists()

    def delete_model(self, request: HttpRequest, obj: Provider) -> None:
        """Delete through the audited service."""
        provider_delete(actor=request.user, provider=obj)

    def save_model(self, request: HttpRequest, obj: Provider, form: ProviderForm, change: bool) -> None:
        """Create or change through the services, so that the change is audited and the key encrypted."""
        data = form.cleaned_data
        settings = {
            "base_url": data.get("base_url") or "",
            "extra_headers": data.get("extra_headers") or {},
            "api_version": data.get("api_version") or "",
            "region": data.get("region") or "",
            "aws_access_key_id": data.get("aws_access_key_id") or "",
            "use_ambient_credentials": bool(data.get("use_ambient_credentials")),
            "is_simulator": bool(data.get("is_simulator")),
        }
        if change:
            updated = provider_update(
                actor=request.user,
                provider=Provider.objects.get(pk=obj.pk),
                name=data["name"],
                api_key=data.get("new_api_key") or None,
                clear_api_key=bool(data.get("clear_api_key")),
                **settings,
            )
        else:
            updated = provider_create(
                actor=request.user,
                organization=data["organization"],
                name=data["name"],
                kind=data["kind"],
                api_key=data.get("new_api_key") or "",
                **settings,
            )
        obj.pk = updated.pk
        obj.refresh_from_db()


class LanguageModelForm(forms.ModelForm):
    """The model form; the organization follows from the provider."""

    options = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text='JSON: {"temperature": 0.2, "reasoning_effort": "medium", "thinking_budget_tokens": 2048}.',
    )

    class Meta:
        model = LanguageModel
        fields = [
            "provider",
            "identifier",
            "display_name",
            "context_limit",
            "is_default",
            "is_enabled",
            "compaction_threshold_percent",
            "max_output_tokens",
            *PRICE_FIELDS,
            "restricted_access",
            "fallback",
        ]
        help_texts = {"is_default": "To change the default, tick this on the model that should become it."}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.initial["options"] = json.dumps(self.instance.options or {})
        for name in ("compaction_threshold_percent", *PRICE_FIELDS):
            if name in self.fields:
                self.fields[name].required = False

    def _post_clean_defaults(self, data: dict[str, Any]) -> None:
        """Empty numbers take the model's defaults (80 %, price 0)."""
        for name in ("compaction_threshold_percent", *PRICE_FIELDS):
            if name in data and data[name] in (None, ""):
                data[name] = LanguageModel._meta.get_field(name).get_default()

    def clean_options(self) -> dict[str, Any]:
        """Parse the JSON text; the service checks the keys and values."""
        text = (self.cleaned_data.get("options") or "").strip()
        if not text:
            return {}
        try:
            return json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise ValidationError('Write the options as a JSON object, e.g. {"temperature": 0.2}.') from None

    def clean(self) -> dict[str, Any]:
        """Check what the service will check, so that mistakes show on the form's fields."""
        data = super().clean()
        self._post_clean_defaults(data)
        provider = data.get("provider") or (self.instance.provider if self.instance.pk else None)
        if provider is None:
            return data
        if data.get("identifier"):
            _report(
                self,
                lambda: validate_model_identifier(
                    provider=provider, identifier=data["identifier"], exclude_pk=self.instance.pk
                ),
            )
        limit = _report(self, lambda: validate_context_limit(data.get("context_limit")))
        if limit is None:
            return data
        optional = {name: data.get(name) for name in ("options", "fallback", "max_output_tokens", *PRICE_FIELDS)}
        optional["compaction_threshold_percent"] = data.get("compaction_threshold_percent")
        _report(
            self,
            lambda: clean_model_fields(
                optional,
                organization=provider.organization,
                model=self.instance if self.instance.pk else None,
                context_limit=limit,
            ),
        )
        if data.get("is_default") and not data.get("is_enabled", True):
            self.add_error("is_default", "A disabled model cannot be the default: enable it or do not star it.")
        elif self.instance.pk and self.instance.is_default and not data.get("is_enabled", True):
            self.add_error(
                "is_enabled", "This is the organization's default model: make another model the default first."
            )
        return data


@admin.register(LanguageModel)
class LanguageModelAdmin(_ScopedAdmin):
    """Models: owners add, change and delete (when no session used them); auditors read."""

    form = LanguageModelForm
    manage_action = "model.manage"
    list_display = [
        "display_name",
        "identifier",
        "organization",
        "provider",
        "context_limit",
        "is_default",
        "is_enabled",
        "restricted_access",
    ]
    list_filter = ["is_default", "is_enabled", "restricted_access"]
    list_select_related = ["organization", "provider"]
    search_fields = ["identifier", "display_name", "organization__slug"]

    def get_readonly_fields(self, request: HttpRequest, obj: LanguageModel | None = None) -> list[str]:
        """Provider is fixed once created; auditors read everything."""
        if obj is not None and not self.has_change_permission(request, obj):
            return [*LanguageModelForm.Meta.fields, "options"]
        return ["provider"] if obj is not None else []

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        """Offer only providers and models of organizations the admin user owns."""
        if db_field.name == "provider":
            kwargs["queryset"] = Provider.objects.filter(
                organization__in=_orgs(request, self.manage_action)
            ).select_related("organization")
        if db_field.name == "fallback":
            kwargs["queryset"] = LanguageModel.objects.filter(organization__in=_orgs(request, self.manage_action))
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def has_delete_permission(self, request: HttpRequest, obj: LanguageModel | None = None) -> bool:
        """Owners, for a model no session used (model_delete refuses otherwise: disable it instead)."""
        if obj is None:
            return False
        sessions = getattr(obj, "sessions", None)
        return self.has_change_permission(request, obj) and not (sessions is not None and sessions.exists())

    def delete_model(self, request: HttpRequest, obj: LanguageModel) -> None:
        """Delete through the audited service."""
        model_delete(actor=request.user, model=obj)

    def save_model(self, request: HttpRequest, obj: LanguageModel, form: LanguageModelForm, change: bool) -> None:
        """Create or change through the services, so that every change is audited."""
        data = form.cleaned_data
        fields = {
            name: data[name]
            for name in (
                "is_enabled",
                "compaction_threshold_percent",
                "max_output_tokens",
                "options",
                *PRICE_FIELDS,
                "restricted_access",
                "fallback",
            )
            if name in data
        }
        if change:
            current = LanguageModel.objects.select_related("organization").get(pk=obj.pk)
            updated = model_update(
                actor=request.user,
                model=current,
                identifier=data.get("identifier") or current.identifier,
                display_name=data["display_name"],
                context_limit=data["context_limit"],
                **fields,
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
                **fields,
            )
        obj.pk = updated.pk
        obj.refresh_from_db()
