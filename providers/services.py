"""Writes to providers and models: permission check, change, audit, all in one transaction."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

import audit
from audit.services import Actor, AgentActor, SystemActor
from organizations.models import Organization
from organizations.permissions import require_permission
from providers.crypto import encrypt_secret, secret_hint
from providers.models import LanguageModel, Provider, ProviderKind

MAX_CONTEXT_LIMIT = 2_147_483_647  # PositiveIntegerField's ceiling


def _require(actor: Actor, organization: Organization, action: str) -> None:
    """Owners (and superusers) only; Airlock itself (SystemActor / None) bootstraps without a check."""
    if actor is None or isinstance(actor, SystemActor):
        return
    if isinstance(actor, AgentActor):
        raise PermissionDenied("The agent may not change providers or models.")
    require_permission(actor, organization, action)


def masked_key(api_key: str) -> str:
    """How a key may appear in audit rows and pages: "****" and at most its last four characters."""
    return "****" + secret_hint(api_key)


def validate_base_url(base_url: str, *, field: str = "base_url") -> str:
    """An http(s) URL with a host and no credentials, stripped; else ValidationError naming the field."""
    url = base_url.strip()
    example = "e.g. http://127.0.0.1:8000/v1 or https://llm.internal.example/v1"
    if not url:
        raise ValidationError({field: f"Give the provider's base URL ({example})."})
    if len(url) > 500:
        raise ValidationError({field: "The base URL is longer than 500 characters."})
    if any(ch.isspace() for ch in url):
        raise ValidationError({field: f"The base URL contains spaces: {example}."})
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise ValidationError({field: f"The base URL has an invalid port: {example}."}) from None
    if parts.scheme not in ("http", "https"):
        raise ValidationError({field: f"The base URL must start with http:// or https:// ({example})."})
    if not parts.hostname:
        raise ValidationError({field: f"The base URL has no host name ({example})."})
    if parts.username or parts.password:
        raise ValidationError({field: "Remove the user name / password from the base URL: put the key in api_key."})
    if parts.query or parts.fragment:
        raise ValidationError({field: f"Remove the query string or fragment from the base URL ({example})."})
    return url


def validate_api_key(api_key: str) -> str:
    """The key without surrounding whitespace; ValidationError on inner spaces or line breaks."""
    key = api_key.strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in key):
        raise ValidationError({"api_key": "The API key contains spaces or line breaks: paste only the key itself."})
    if len(key) > 4096:
        raise ValidationError({"api_key": "The API key is longer than 4096 characters: paste only the key itself."})
    return key


def validate_provider_name(*, organization: Organization, name: str, exclude_pk: int | None = None) -> str:
    """The stripped name, if it is free in the organization; else ValidationError on `name`."""
    clean = name.strip()
    if not clean:
        raise ValidationError({"name": "Give the provider a name (e.g. vLLM on gpu-1)."})
    if len(clean) > 100:
        raise ValidationError({"name": "The name is longer than 100 characters."})
    taken = Provider.objects.filter(organization=organization, name=clean)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if taken.exists():
        raise ValidationError({"name": f"{organization.slug} already has a provider named {clean!r}: pick another."})
    return clean


@transaction.atomic
def provider_create(
    *,
    actor: Actor,
    organization: Organization,
    name: str,
    kind: str,
    base_url: str = "",
    api_key: str = "",
    is_simulator: bool = False,
) -> Provider:
    """Add an LLM endpoint to an organization; the key is stored encrypted and only its last 4 chars shown."""
    _require(actor, organization, "provider.manage")
    clean_name = validate_provider_name(organization=organization, name=name)
    if kind not in ProviderKind.values:
        raise ValidationError({"kind": f"Unknown kind {kind!r}: use one of {', '.join(ProviderKind.values)}."})
    clean_url = base_url.strip()
    if kind == ProviderKind.OPENAI_COMPATIBLE or clean_url:
        clean_url = validate_base_url(clean_url)
    key = validate_api_key(api_key)
    provider = Provider(
        organization=organization,
        name=clean_name,
        kind=kind,
        base_url=clean_url,
        api_key_encrypted=encrypt_secret(key) if key else "",
        api_key_hint=secret_hint(key) if key else "",
        is_simulator=bool(is_simulator),
    )
    try:
        with transaction.atomic():
            provider.save(force_insert=True)
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a provider named {clean_name!r}: pick another."}
        ) from None
    data: dict[str, Any] = {
        "name": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "is_simulator": provider.is_simulator,
    }
    if key:
        data["api_key"] = masked_key(key)
    audit.record(action="provider.created", actor=actor, organization=organization, target=provider, data=data)
    return provider


@transaction.atomic
def provider_update(
    *,
    actor: Actor,
    provider: Provider,
    name: str | None = None,
    base_url: str | None = None,
    is_simulator: bool | None = None,
    api_key: str | None = None,
    clear_api_key: bool = False,
) -> Provider:
    """Change a provider; a new `api_key` replaces the stored one (audited as provider.key_rotated)."""
    organization = provider.organization
    _require(actor, organization, "provider.manage")
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    changes: dict[str, dict[str, Any]] = {}
    if name is not None and name.strip() != provider.name:
        clean = validate_provider_name(organization=organization, name=name, exclude_pk=provider.pk)
        changes["name"] = {"before": provider.name, "after": clean}
        provider.name = clean
    if base_url is not None and base_url.strip() != provider.base_url:
        clean_url = (
            validate_base_url(base_url) if (base_url.strip() or provider.kind == ProviderKind.OPENAI_COMPATIBLE) else ""
        )
        changes["base_url"] = {"before": provider.base_url, "after": clean_url}
        provider.base_url = clean_url
    if is_simulator is not None and bool(is_simulator) != provider.is_simulator:
        changes["is_simulator"] = {"before": provider.is_simulator, "after": bool(is_simulator)}
        provider.is_simulator = bool(is_simulator)
    key_change: dict[str, Any] | None = None
    before_key = "****" + provider.api_key_hint if provider.has_api_key else None
    if api_key is not None and api_key.strip():
        key = validate_api_key(api_key)
        provider.api_key_encrypted = encrypt_secret(key)
        provider.api_key_hint = secret_hint(key)
        key_change = {"before": before_key, "after": masked_key(key)}
    elif clear_api_key and provider.has_api_key:
        provider.api_key_encrypted = ""
        provider.api_key_hint = ""
        key_change = {"before": before_key, "after": None}
    if not changes and key_change is None:
        return provider
    try:
        with transaction.atomic():
            provider.save()
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a provider named {provider.name!r}."}
        ) from None
    if changes:
        audit.record(
            action="provider.updated",
            actor=actor,
            organization=organization,
            target=provider,
            data={"changes": changes},
        )
    if key_change is not None:
        audit.record(
            action="provider.key_rotated", actor=actor, organization=organization, target=provider, data=key_change
        )
    return provider


def validate_context_limit(context_limit: Any) -> int:
    """The context window as a positive int; else ValidationError on `context_limit`."""
    message = "Give the context window in tokens: a whole number above 0 (e.g. 128000)."
    if isinstance(context_limit, bool) or not isinstance(context_limit, int):
        try:
            context_limit = int(str(context_limit).strip())
        except ValueError:
            raise ValidationError({"context_limit": message}) from None
    if context_limit <= 0 or context_limit > MAX_CONTEXT_LIMIT:
        raise ValidationError({"context_limit": message})
    return context_limit


def _lock_defaults(organization: Organization) -> LanguageModel | None:
    """Serialize default changes in an organization (lock its row); return the current default."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    return LanguageModel.objects.filter(organization=organization, is_default=True).first()


def _duplicate_identifier(provider: Provider, identifier: str) -> str:
    return f"Provider {provider.name!r} already offers {identifier!r}: pick the existing model or another identifier."


def validate_model_identifier(*, provider: Provider, identifier: str) -> str:
    """The stripped identifier, if the provider does not offer it yet; else ValidationError on `identifier`."""
    clean = identifier.strip()
    if not clean:
        raise ValidationError({"identifier": "Give the model name the provider expects (e.g. gpt-4o, llama3.1:8b)."})
    if len(clean) > 200:
        raise ValidationError({"identifier": "The model identifier is longer than 200 characters."})
    if LanguageModel.objects.filter(
        organization_id=provider.organization_id, provider=provider, identifier=clean
    ).exists():
        raise ValidationError({"identifier": _duplicate_identifier(provider, clean)})
    return clean


def _model_ref(model: LanguageModel | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {"id": model.pk, "identifier": model.identifier, "display_name": model.display_name}


@transaction.atomic
def model_create(
    *,
    actor: Actor,
    organization: Organization,
    provider: Provider,
    identifier: str,
    display_name: str,
    context_limit: int,
    is_default: bool = False,
) -> LanguageModel:
    """Offer a provider's model to an organization; the first model (or `is_default`) becomes the default."""
    _require(actor, organization, "model.manage")
    if provider.organization_id != organization.pk:
        raise ValidationError({"provider": f"No such provider in {organization.slug}: pick one of its providers."})
    clean_identifier = validate_model_identifier(provider=provider, identifier=identifier)
    clean_display = display_name.strip() or clean_identifier
    if len(clean_display) > 200:
        raise ValidationError({"display_name": "The display name is longer than 200 characters."})
    limit = validate_context_limit(context_limit)
    previous = _lock_defaults(organization)
    make_default = bool(is_default) or previous is None
    if make_default and previous is not None:
        LanguageModel.objects.filter(pk=previous.pk).update(is_default=False)
    model = LanguageModel(
        organization=organization,
        provider=provider,
        identifier=clean_identifier,
        display_name=clean_display,
        context_limit=limit,
        is_default=make_default,
    )
    try:
        with transaction.atomic():
            model.save(force_insert=True)
    except IntegrityError:
        raise ValidationError({"identifier": _duplicate_identifier(provider, clean_identifier)}) from None
    data: dict[str, Any] = {
        "identifier": model.identifier,
        "display_name": model.display_name,
        "provider": provider.name,
        "provider_id": provider.pk,
        "context_limit": model.context_limit,
        "is_default": model.is_default,
    }
    if make_default and previous is not None:
        data["previous_default"] = _model_ref(previous)
    audit.record(action="model.created", actor=actor, organization=organization, target=model, data=data)
    return model


@transaction.atomic
def model_update(
    *, actor: Actor, model: LanguageModel, display_name: str | None = None, context_limit: int | None = None
) -> LanguageModel:
    """Rename a model or change its context window (the default is changed with model_set_default)."""
    organization = model.organization
    _require(actor, organization, "model.manage")
    model = LanguageModel.objects.select_for_update().get(pk=model.pk)
    changes: dict[str, dict[str, Any]] = {}
    if display_name is not None:
        clean = display_name.strip() or model.identifier
        if len(clean) > 200:
            raise ValidationError({"display_name": "The display name is longer than 200 characters."})
        if clean != model.display_name:
            changes["display_name"] = {"before": model.display_name, "after": clean}
            model.display_name = clean
    if context_limit is not None:
        limit = validate_context_limit(context_limit)
        if limit != model.context_limit:
            changes["context_limit"] = {"before": model.context_limit, "after": limit}
            model.context_limit = limit
    if not changes:
        return model
    model.save(update_fields=list(changes))
    audit.record(
        action="model.updated", actor=actor, organization=organization, target=model, data={"changes": changes}
    )
    return model


@transaction.atomic
def model_set_default(*, actor: Actor, model: LanguageModel) -> LanguageModel:
    """Make a model its organization's default (one per organization); the previous default is unset."""
    organization = model.organization
    _require(actor, organization, "model.manage")
    previous = _lock_defaults(organization)
    if previous is not None and previous.pk == model.pk:
        model.is_default = True
        return model
    if previous is not None:
        LanguageModel.objects.filter(pk=previous.pk).update(is_default=False)
    LanguageModel.objects.filter(pk=model.pk).update(is_default=True)
    model.is_default = True
    audit.record(
        action="model.default_changed",
        actor=actor,
        organization=organization,
        target=model,
        data={"before": _model_ref(previous), "after": _model_ref(model)},
    )
    return model
