"""Writes to providers and models: permission check, validation, change, audit, all in one transaction.

Every function is keyword-only and audited with before/after values; a secret appears in an audit row only
masked ("****" and at most its last four characters). Validation errors are `ValidationError({field: message})`
whose message says what to fix.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import ProtectedError

import audit
from audit.services import Actor, AgentActor, SystemActor
from organizations.models import Membership, Organization
from organizations.permissions import require_permission
from portal.crypto import encrypt_secret, secret_hint
from providers.models import LanguageModel, Provider, ProviderKind

MAX_CONTEXT_LIMIT = 2_147_483_647  # PositiveIntegerField's ceiling
USE_PERMISSION = "providers.use_languagemodel"

# Kinds that cannot work without a stored key (bedrock: unless it uses the server's ambient AWS role).
KEY_REQUIRED_KINDS = frozenset(
    {ProviderKind.ANTHROPIC, ProviderKind.OPENAI, ProviderKind.AZURE_OPENAI, ProviderKind.GOOGLE}
)
BASE_URL_REQUIRED_KINDS = frozenset({ProviderKind.OPENAI_COMPATIBLE, ProviderKind.AZURE_OPENAI})
# Headers that carry credentials: they belong in the encrypted api_key, not in plain-text extra_headers.
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key", "proxy-authorization"})
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
MAX_HEADERS = 20
REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
AWS_ACCESS_KEY_ID = re.compile(r"^[A-Z0-9]{16,128}$")

PROVIDER_CHANGES = frozenset(
    {
        "name",
        "base_url",
        "api_key",
        "clear_api_key",
        "extra_headers",
        "api_version",
        "region",
        "aws_access_key_id",
        "use_ambient_credentials",
        "is_simulator",
    }
)
PRICE_FIELDS = (
    "input_price_per_mtok",
    "output_price_per_mtok",
    "cache_read_price_per_mtok",
    "cache_write_price_per_mtok",
)
MODEL_FIELDS = frozenset(
    {
        "is_enabled",
        "compaction_threshold_percent",
        "max_output_tokens",
        "options",
        "restricted_access",
        "fallback",
        *PRICE_FIELDS,
    }
)
MODEL_UPDATE_FIELDS = MODEL_FIELDS | {"identifier", "display_name", "context_limit"}
REASONING_EFFORTS = ("low", "medium", "high")
MIN_THINKING_BUDGET = 1024


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


def _stored_key_mask(provider: Provider) -> str | None:
    return "****" + provider.api_key_hint if provider.has_api_key else None


def _unknown_names(names: set[str], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(names - allowed)
    if unknown:
        raise ValidationError(
            {"__all__": f"Unknown {what} field(s): {', '.join(unknown)}. Use only: {', '.join(sorted(allowed))}."}
        )


# --- provider validation --------------------------------------------------------------------------------------


def validate_kind(kind: Any) -> str:
    """A known provider kind; else ValidationError on `kind` listing the kinds."""
    if kind not in ProviderKind.values:
        raise ValidationError({"kind": f"Unknown kind {kind!r}: use one of {', '.join(ProviderKind.values)}."})
    return str(kind)


def validate_base_url(base_url: str, *, field: str = "base_url") -> str:
    """An http(s) URL with a host and no credentials, stripped; else ValidationError naming the field."""
    url = str(base_url or "").strip()
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
    if not isinstance(api_key, str):
        raise ValidationError({"api_key": "The API key must be text: paste only the key itself."})
    key = api_key.strip()
    if any(ch.isspace() or ord(ch) < 32 for ch in key):
        raise ValidationError({"api_key": "The API key contains spaces or line breaks: paste only the key itself."})
    if len(key) > 4096:
        raise ValidationError({"api_key": "The API key is longer than 4096 characters: paste only the key itself."})
    return key


def validate_provider_name(*, organization: Organization, name: str, exclude_pk: int | None = None) -> str:
    """The stripped name, if it is free in the organization; else ValidationError on `name`."""
    clean = str(name or "").strip()
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


def validate_extra_headers(headers: Any) -> dict[str, str]:
    """Headers sent on every call, as {name: value} text; credential headers are refused (they belong in api_key)."""
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise ValidationError(
            {"extra_headers": 'Give the extra headers as an object of names to values, e.g. {"X-Team": "ml"}.'}
        )
    if len(headers) > MAX_HEADERS:
        raise ValidationError({"extra_headers": f"At most {MAX_HEADERS} extra headers are allowed."})
    clean: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValidationError({"extra_headers": f"Header {name!r}: names and values must both be text."})
        header = name.strip()
        if not HEADER_NAME.match(header):
            raise ValidationError(
                {"extra_headers": f"Header name {header!r} is not valid: use letters, digits and dashes (e.g. X-Team)."}
            )
        if header.lower() in CREDENTIAL_HEADERS:
            raise ValidationError(
                {
                    "extra_headers": f"Header {header!r} carries a credential: extra headers are stored and shown in "
                    "plain text, so put the key in api_key instead (it is encrypted and never shown again)."
                }
            )
        if any(ch in value for ch in "\r\n\0") or len(value) > 1000:
            raise ValidationError(
                {"extra_headers": f"Header {header!r}: the value must be one line of at most 1000 characters."}
            )
        if header.lower() in {existing.lower() for existing in clean}:
            raise ValidationError({"extra_headers": f"Header {header!r} is given twice."})
        clean[header] = value.strip()
    return clean


def _clean_text(value: Any, *, field: str, limit: int) -> str:
    text = str(value or "").strip()
    if len(text) > limit or any(ch.isspace() for ch in text):
        raise ValidationError({field: f"Give a single word of at most {limit} characters."})
    return text


def validate_provider_config(
    *,
    kind: str,
    base_url: str,
    has_api_key: bool,
    api_version: str,
    region: str,
    aws_access_key_id: str,
    use_ambient_credentials: bool,
) -> None:
    """Check that the settings fit the kind; ValidationError listing every field to fix."""
    errors: dict[str, str] = {}
    if kind in BASE_URL_REQUIRED_KINDS and not base_url:
        example = "https://<resource>.openai.azure.com" if kind == ProviderKind.AZURE_OPENAI else "http://vllm:8000/v1"
        errors["base_url"] = f"A {kind} provider needs its base URL (e.g. {example})."
    if kind in KEY_REQUIRED_KINDS and not has_api_key:
        errors["api_key"] = f"A {kind} provider needs an API key: paste the key the vendor gave you."
    if kind == ProviderKind.AZURE_OPENAI and not api_version:
        errors["api_version"] = "Azure OpenAI needs the API version to call (e.g. 2024-10-21)."
    if kind == ProviderKind.BEDROCK:
        if not region:
            errors["region"] = "Bedrock needs the AWS region of the models (e.g. us-east-1)."
        elif not REGION.match(region):
            errors["region"] = f"{region!r} is not an AWS region name (e.g. us-east-1, eu-central-1)."
        if not use_ambient_credentials:
            if not aws_access_key_id:
                errors["aws_access_key_id"] = (
                    "Give the AWS access key id (with its secret in api_key), or turn on use_ambient_credentials "
                    "to use the server's own AWS role."
                )
            elif not AWS_ACCESS_KEY_ID.match(aws_access_key_id):
                errors["aws_access_key_id"] = "An AWS access key id is 16 or more capital letters and digits (AKIA...)."
            if not has_api_key:
                errors["api_key"] = (
                    "Give the AWS secret access key in api_key, or turn on use_ambient_credentials to use the "
                    "server's own AWS role."
                )
    if errors:
        raise ValidationError(errors)


def _clean_base_url(kind: str, base_url: str) -> str:
    url = str(base_url or "").strip()
    return validate_base_url(url) if (url or kind in BASE_URL_REQUIRED_KINDS) else ""


def _provider_snapshot(provider: Provider) -> dict[str, Any]:
    return {
        "name": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "is_simulator": provider.is_simulator,
        "extra_headers": dict(provider.extra_headers or {}),
        "api_version": provider.api_version,
        "region": provider.region,
        "aws_access_key_id": provider.aws_access_key_id,
        "use_ambient_credentials": provider.use_ambient_credentials,
    }


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
    extra_headers: dict[str, str] | None = None,
    api_version: str = "",
    region: str = "",
    aws_access_key_id: str = "",
    use_ambient_credentials: bool = False,
) -> Provider:
    """Add an LLM endpoint to an organization; the key is stored encrypted and only its last 4 chars shown."""
    _require(actor, organization, "provider.manage")
    clean_name = validate_provider_name(organization=organization, name=name)
    kind = validate_kind(kind)
    clean_url = _clean_base_url(kind, base_url)
    key = validate_api_key(api_key or "")
    headers = validate_extra_headers(extra_headers)
    clean_version = _clean_text(api_version, field="api_version", limit=40)
    clean_region = _clean_text(region, field="region", limit=40)
    clean_key_id = _clean_text(aws_access_key_id, field="aws_access_key_id", limit=128)
    validate_provider_config(
        kind=kind,
        base_url=clean_url,
        has_api_key=bool(key),
        api_version=clean_version,
        region=clean_region,
        aws_access_key_id=clean_key_id,
        use_ambient_credentials=bool(use_ambient_credentials),
    )
    provider = Provider(
        organization=organization,
        name=clean_name,
        kind=kind,
        base_url=clean_url,
        api_key_encrypted=encrypt_secret(key) if key else "",
        api_key_hint=secret_hint(key) if key else "",
        is_simulator=bool(is_simulator),
        extra_headers=headers,
        api_version=clean_version,
        region=clean_region,
        aws_access_key_id=clean_key_id,
        use_ambient_credentials=bool(use_ambient_credentials),
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
    for field in ("extra_headers", "api_version", "region", "aws_access_key_id", "use_ambient_credentials"):
        value = getattr(provider, field)
        if value:
            data[field] = value
    if key:
        data["api_key_hint"] = masked_key(key)
    audit.record(action="provider.created", actor=actor, organization=organization, target=provider, data=data)
    return provider


@transaction.atomic
def provider_update(*, actor: Actor, provider: Provider, **changes: Any) -> Provider:
    """Change a provider; a new `api_key` replaces the stored one (audited as provider.key_rotated).

    Changes among: name, base_url, api_key (None or empty: unchanged), clear_api_key, extra_headers,
    api_version, region, aws_access_key_id, use_ambient_credentials, is_simulator.
    """
    _unknown_names(set(changes), PROVIDER_CHANGES, "provider")
    organization = provider.organization
    _require(actor, organization, "provider.manage")
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    before = _provider_snapshot(provider)
    after = dict(before)
    if changes.get("name") is not None:
        after["name"] = validate_provider_name(organization=organization, name=changes["name"], exclude_pk=provider.pk)
    if changes.get("base_url") is not None:
        after["base_url"] = _clean_base_url(provider.kind, changes["base_url"])
    if changes.get("extra_headers") is not None:
        after["extra_headers"] = validate_extra_headers(changes["extra_headers"])
    for field, limit in (("api_version", 40), ("region", 40), ("aws_access_key_id", 128)):
        if changes.get(field) is not None:
            after[field] = _clean_text(changes[field], field=field, limit=limit)
    for field in ("use_ambient_credentials", "is_simulator"):
        if changes.get(field) is not None:
            after[field] = bool(changes[field])
    new_key = validate_api_key(changes["api_key"]) if changes.get("api_key") else ""
    clear_key = bool(changes.get("clear_api_key")) and not new_key
    has_key = bool(new_key) or (provider.has_api_key and not clear_key)
    validate_provider_config(
        kind=provider.kind,
        base_url=after["base_url"],
        has_api_key=has_key,
        api_version=after["api_version"],
        region=after["region"],
        aws_access_key_id=after["aws_access_key_id"],
        use_ambient_credentials=after["use_ambient_credentials"],
    )
    diff = {field: {"before": before[field], "after": after[field]} for field in after if after[field] != before[field]}
    key_change: dict[str, Any] | None = None
    if new_key:
        key_change = {"before": _stored_key_mask(provider), "after": masked_key(new_key)}
        provider.api_key_encrypted = encrypt_secret(new_key)
        provider.api_key_hint = secret_hint(new_key)
    elif clear_key and provider.has_api_key:
        key_change = {"before": _stored_key_mask(provider), "after": None}
        provider.api_key_encrypted = ""
        provider.api_key_hint = ""
    if not diff and key_change is None:
        return provider
    for field, change in diff.items():
        setattr(provider, field, change["after"])
    try:
        with transaction.atomic():
            provider.save()
    except IntegrityError:
        raise ValidationError(
            {"name": f"{organization.slug} already has a provider named {provider.name!r}."}
        ) from None
    if diff:
        audit.record(
            action="provider.updated", actor=actor, organization=organization, target=provider, data={"changes": diff}
        )
    if key_change is not None:
        audit.record(
            action="provider.key_rotated", actor=actor, organization=organization, target=provider, data=key_change
        )
    return provider


@transaction.atomic
def provider_delete(*, actor: Actor, provider: Provider) -> None:
    """Remove a provider that no model uses any more; its stored key goes with it."""
    organization = provider.organization
    _require(actor, organization, "provider.manage")
    provider = Provider.objects.select_for_update().get(pk=provider.pk)
    used_by = list(provider.models.order_by("display_name").values_list("display_name", flat=True)[:5])
    if used_by:
        raise ValidationError(
            {"provider": f"Models still use {provider.name!r} ({', '.join(used_by)}): delete or move them first."}
        )
    snapshot = _provider_snapshot(provider)
    snapshot["api_key_hint"] = _stored_key_mask(provider)
    target_pk = provider.pk
    try:
        provider.delete()
    except ProtectedError:
        raise ValidationError({"provider": f"Models still use {provider.name!r}: delete or move them first."}) from None
    provider.pk = target_pk  # so that the audit row names what was deleted
    audit.record(
        action="provider.deleted", actor=actor, organization=organization, target=provider, data={"before": snapshot}
    )


# --- model validation ----------------------------------------------------------------------------------------


def _positive_int(value: Any, *, field: str, message: str, ceiling: int = MAX_CONTEXT_LIMIT) -> int:
    if isinstance(value, bool):
        raise ValidationError({field: message})
    if not isinstance(value, int):
        try:
            value = int(str(value).strip())
        except ValueError:
            raise ValidationError({field: message}) from None
    if value <= 0 or value > ceiling:
        raise ValidationError({field: message})
    return value


def validate_context_limit(context_limit: Any) -> int:
    """The context window as a positive int; else ValidationError on `context_limit`."""
    message = "Give the context window in tokens: a whole number above 0 (e.g. 128000)."
    return _positive_int(context_limit, field="context_limit", message=message)


def validate_compaction_threshold(value: Any) -> int:
    """A percentage from 1 to 100; else ValidationError on `compaction_threshold_percent`."""
    message = "Give the compaction threshold as a whole percentage from 1 to 100 (e.g. 80)."
    return _positive_int(value, field="compaction_threshold_percent", message=message, ceiling=100)


def validate_max_output_tokens(value: Any, *, context_limit: int) -> int | None:
    """None, or a positive token count below the context window; else ValidationError on `max_output_tokens`."""
    if value is None or value == "":
        return None
    message = (
        "Give the most tokens one answer may have: a whole number above 0 and below the context limit "
        f"({context_limit})."
    )
    tokens = _positive_int(value, field="max_output_tokens", message=message)
    if tokens >= context_limit:
        raise ValidationError({"max_output_tokens": message})
    return tokens


def validate_price(value: Any, *, field: str) -> Decimal:
    """A price per million tokens: a number >= 0 with at most 6 decimals; else ValidationError on the field."""
    message = "Give the price per million tokens as a number of at least 0 (e.g. 2.50)."
    if isinstance(value, bool) or value is None or value == "":
        raise ValidationError({field: message})
    try:
        price = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError({field: message}) from None
    if not price.is_finite() or price < 0:
        raise ValidationError({field: message})
    if price != price.quantize(Decimal("0.000001")) or price >= Decimal(10**6):
        raise ValidationError({field: "The price may have at most 6 decimals and must be below 1,000,000."})
    return price


def validate_options(options: Any) -> dict[str, Any]:
    """Vendor options limited to temperature (0..2), reasoning_effort (low/medium/high), thinking_budget_tokens."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValidationError({"options": 'Give the options as an object, e.g. {"temperature": 0.2}.'})
    allowed = ("temperature", "reasoning_effort", "thinking_budget_tokens")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValidationError(
            {"options": f"Unknown option(s) {', '.join(map(str, unknown))}: use {', '.join(allowed)}."}
        )
    clean: dict[str, Any] = {}
    if options.get("temperature") is not None:
        value = options["temperature"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 2:
            raise ValidationError({"options": "temperature must be a number from 0 to 2."})
        clean["temperature"] = value
    if options.get("reasoning_effort") is not None:
        if options["reasoning_effort"] not in REASONING_EFFORTS:
            raise ValidationError({"options": f"reasoning_effort must be one of {', '.join(REASONING_EFFORTS)}."})
        clean["reasoning_effort"] = options["reasoning_effort"]
    if options.get("thinking_budget_tokens") is not None:
        value = options["thinking_budget_tokens"]
        if isinstance(value, bool) or not isinstance(value, int) or value < MIN_THINKING_BUDGET:
            raise ValidationError(
                {"options": f"thinking_budget_tokens must be a whole number of at least {MIN_THINKING_BUDGET}."}
            )
        clean["thinking_budget_tokens"] = value
    return clean


def validate_fallback(
    fallback: Any, *, organization: Organization, model: LanguageModel | None
) -> LanguageModel | None:
    """None, or another model of the same organization whose own fallback chain does not lead back to `model`."""
    if fallback is None:
        return None
    if not isinstance(fallback, LanguageModel) or fallback.organization_id != organization.pk:
        raise ValidationError({"fallback": f"No such model in {organization.slug}: pick one of its models."})
    if model is not None and model.pk is not None:
        if fallback.pk == model.pk:
            raise ValidationError({"fallback": "A model cannot be its own fallback: pick another model."})
        seen, current = {model.pk}, fallback
        while current is not None and current.fallback_id is not None:
            if current.fallback_id in seen or len(seen) > 100:
                raise ValidationError(
                    {
                        "fallback": f"{fallback.display_name!r} falls back (in turn) to this model: "
                        "that loop would never end."
                    }
                )
            seen.add(current.pk)
            current = LanguageModel.objects.filter(pk=current.fallback_id).only("pk", "fallback_id").first()
    return fallback


def _duplicate_identifier(provider: Provider, identifier: str) -> str:
    return f"Provider {provider.name!r} already offers {identifier!r}: pick the existing model or another identifier."


def validate_model_identifier(*, provider: Provider, identifier: str, exclude_pk: int | None = None) -> str:
    """The stripped identifier, if the provider does not offer it yet; else ValidationError on `identifier`."""
    clean = str(identifier or "").strip()
    if not clean:
        raise ValidationError({"identifier": "Give the model name the provider expects (e.g. gpt-4o, llama3.1:8b)."})
    if len(clean) > 200:
        raise ValidationError({"identifier": "The model identifier is longer than 200 characters."})
    taken = LanguageModel.objects.filter(organization_id=provider.organization_id, provider=provider, identifier=clean)
    if exclude_pk is not None:
        taken = taken.exclude(pk=exclude_pk)
    if taken.exists():
        raise ValidationError({"identifier": _duplicate_identifier(provider, clean)})
    return clean


def _clean_display_name(display_name: Any, identifier: str) -> str:
    clean = str(display_name or "").strip() or identifier
    if len(clean) > 200:
        raise ValidationError({"display_name": "The display name is longer than 200 characters."})
    return clean


def _clean_model_fields(
    fields: dict[str, Any], *, organization: Organization, model: LanguageModel | None, context_limit: int
) -> dict[str, Any]:
    """Validate the optional model fields that are present; returns them cleaned."""
    clean: dict[str, Any] = {}
    for flag in ("is_enabled", "restricted_access"):
        if flag in fields:
            if not isinstance(fields[flag], bool):
                raise ValidationError({flag: f"{flag} must be true or false."})
            clean[flag] = fields[flag]
    if "compaction_threshold_percent" in fields:
        clean["compaction_threshold_percent"] = validate_compaction_threshold(fields["compaction_threshold_percent"])
    if "max_output_tokens" in fields:
        clean["max_output_tokens"] = validate_max_output_tokens(
            fields["max_output_tokens"], context_limit=context_limit
        )
    if "options" in fields:
        clean["options"] = validate_options(fields["options"])
    for price in PRICE_FIELDS:
        if price in fields:
            clean[price] = validate_price(fields[price], field=price)
    if "fallback" in fields:
        clean["fallback"] = validate_fallback(fields["fallback"], organization=organization, model=model)
    return clean


def _audit_value(field: str, value: Any) -> Any:
    if field == "fallback":
        return _model_ref(value)
    if isinstance(value, Decimal):
        return str(value)
    return value


def _lock_defaults(organization: Organization) -> LanguageModel | None:
    """Serialize default changes in an organization (lock its row); return the current default."""
    Organization.objects.select_for_update().filter(pk=organization.pk).first()
    return LanguageModel.objects.filter(organization=organization, is_default=True).first()


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
    **fields: Any,
) -> LanguageModel:
    """Offer a provider's model to an organization; the first enabled model (or `is_default`) becomes the default.

    Fields among: is_enabled, compaction_threshold_percent, max_output_tokens, options, the four prices,
    restricted_access, fallback.
    """
    _unknown_names(set(fields), MODEL_FIELDS, "model")
    _require(actor, organization, "model.manage")
    if not isinstance(provider, Provider) or provider.organization_id != organization.pk:
        raise ValidationError({"provider": f"No such provider in {organization.slug}: pick one of its providers."})
    clean_identifier = validate_model_identifier(provider=provider, identifier=identifier)
    clean_display = _clean_display_name(display_name, clean_identifier)
    limit = validate_context_limit(context_limit)
    clean = _clean_model_fields(fields, organization=organization, model=None, context_limit=limit)
    enabled = clean.get("is_enabled", True)
    if is_default and not enabled:
        raise ValidationError({"is_default": "A disabled model cannot be the default: enable it or do not star it."})
    previous = _lock_defaults(organization)
    make_default = bool(is_default) or (previous is None and enabled)
    if make_default and previous is not None:
        LanguageModel.objects.filter(pk=previous.pk).update(is_default=False)
    model = LanguageModel(
        organization=organization,
        provider=provider,
        identifier=clean_identifier,
        display_name=clean_display,
        context_limit=limit,
        is_default=make_default,
        **clean,
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
    data.update({field: _audit_value(field, value) for field, value in clean.items()})
    if make_default and previous is not None:
        data["previous_default"] = _model_ref(previous)
    audit.record(action="model.created", actor=actor, organization=organization, target=model, data=data)
    return model


@transaction.atomic
def model_update(*, actor: Actor, model: LanguageModel, **fields: Any) -> LanguageModel:
    """Change a model's settings (the default is changed with model_set_default); audits each change."""
    _unknown_names(set(fields), MODEL_UPDATE_FIELDS, "model")
    organization = model.organization
    _require(actor, organization, "model.manage")
    model = (
        LanguageModel.objects.select_for_update(of=("self",)).select_related("provider", "fallback").get(pk=model.pk)
    )
    after: dict[str, Any] = {}
    if fields.get("identifier") is not None:
        after["identifier"] = validate_model_identifier(
            provider=model.provider, identifier=fields["identifier"], exclude_pk=model.pk
        )
    if fields.get("display_name") is not None:
        after["display_name"] = _clean_display_name(fields["display_name"], after.get("identifier", model.identifier))
    if fields.get("context_limit") is not None:
        after["context_limit"] = validate_context_limit(fields["context_limit"])
    limit = after.get("context_limit", model.context_limit)
    optional = {name: value for name, value in fields.items() if name in MODEL_FIELDS}
    after.update(_clean_model_fields(optional, organization=organization, model=model, context_limit=limit))
    if "max_output_tokens" not in after and model.max_output_tokens and model.max_output_tokens >= limit:
        raise ValidationError(
            {"context_limit": f"The context limit must stay above max_output_tokens ({model.max_output_tokens})."}
        )
    if after.get("is_enabled") is False and model.is_default:
        raise ValidationError(
            {"is_enabled": "This is the organization's default model: make another model the default first."}
        )
    changes: dict[str, dict[str, Any]] = {}
    for field, value in after.items():
        current = getattr(model, field)
        if field == "fallback":
            if (current.pk if current else None) == (value.pk if value else None):
                continue
        elif current == value:
            continue
        changes[field] = {"before": _audit_value(field, current), "after": _audit_value(field, value)}
        setattr(model, field, value)
    if not changes:
        return model
    try:
        with transaction.atomic():
            model.save(update_fields=list(changes))
    except IntegrityError:
        raise ValidationError({"identifier": _duplicate_identifier(model.provider, model.identifier)}) from None
    audit.record(
        action="model.updated", actor=actor, organization=organization, target=model, data={"changes": changes}
    )
    return model


@transaction.atomic
def model_delete(*, actor: Actor, model: LanguageModel) -> None:
    """Remove a model no session refers to; refused otherwise (disable it instead, the history stays)."""
    organization = model.organization
    _require(actor, organization, "model.manage")
    model = LanguageModel.objects.select_for_update().get(pk=model.pk)
    refusal = f"Sessions use {model.display_name!r}: disable it instead (is_enabled false), so their history stays."
    sessions = getattr(model, "sessions", None)
    if sessions is not None and sessions.exists():
        raise ValidationError({"model": refusal})
    if model.is_default and LanguageModel.objects.filter(organization=organization).exclude(pk=model.pk).exists():
        raise ValidationError(
            {"model": "This is the organization's default model: make another model the default first."}
        )
    snapshot = {
        "identifier": model.identifier,
        "display_name": model.display_name,
        "provider_id": model.provider_id,
        "context_limit": model.context_limit,
        "is_default": model.is_default,
        "is_enabled": model.is_enabled,
    }
    from guardian.models import GroupObjectPermission, UserObjectPermission

    target_pk = model.pk
    for table in (UserObjectPermission, GroupObjectPermission):
        table.objects.filter(
            content_type__app_label="providers", content_type__model="languagemodel", object_pk=str(target_pk)
        ).delete()
    try:
        with transaction.atomic():
            model.delete()
    except ProtectedError:
        raise ValidationError({"model": refusal}) from None
    model.pk = target_pk
    audit.record(
        action="model.deleted", actor=actor, organization=organization, target=model, data={"before": snapshot}
    )


@transaction.atomic
def model_set_default(*, actor: Actor, model: LanguageModel) -> LanguageModel:
    """Make a model its organization's default (one per organization); the previous default is unset."""
    organization = model.organization
    _require(actor, organization, "model.manage")
    previous = _lock_defaults(organization)
    if previous is not None and previous.pk == model.pk:
        model.is_default = True
        return model
    if not LanguageModel.objects.filter(pk=model.pk, is_enabled=True).exists():
        raise ValidationError({"is_default": f"{model.display_name!r} is disabled: enable it before starring it."})
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


def _grantee(*, model: LanguageModel, user: AbstractBaseUser | None, group: Group | None) -> tuple[Any, dict[str, str]]:
    """The user or group an access change is about, checked; and how the audit row names it."""
    if (user is None) == (group is None):
        raise ValidationError({"__all__": "Name exactly one user or one group."})
    if user is not None:
        if (
            not isinstance(user, get_user_model())
            or not Membership.objects.filter(user_id=user.pk, organization_id=model.organization_id).exists()
        ):
            raise ValidationError(
                {"user": f"That user is not a member of {model.organization.slug}: invite them first."}
            )
        return user, {"user": user.get_username(), "user_id": str(user.pk)}
    if not isinstance(group, Group):
        raise ValidationError({"group": "No such group."})
    return group, {"group": group.name, "group_id": str(group.pk)}


@transaction.atomic
def model_grant_access(
    *, actor: Actor, model: LanguageModel, user: AbstractBaseUser | None = None, group: Group | None = None
) -> None:
    """Let a user or group use a model whose access is restricted (guardian `use_languagemodel`)."""
    from guardian.shortcuts import assign_perm

    organization = model.organization
    _require(actor, organization, "model.manage")
    grantee, who = _grantee(model=model, user=user, group=group)
    if _holds_directly(user, model) if user is not None else _group_holds(group, model):
        return
    assign_perm(USE_PERMISSION, grantee, model)
    audit.record(
        action="model.access_granted",
        actor=actor,
        organization=organization,
        target=model,
        data={**who, "restricted_access": model.restricted_access},
    )


@transaction.atomic
def model_revoke_access(
    *, actor: Actor, model: LanguageModel, user: AbstractBaseUser | None = None, group: Group | None = None
) -> None:
    """Take back a user's or group's grant on a model (grants through other groups stay)."""
    from guardian.shortcuts import remove_perm

    organization = model.organization
    _require(actor, organization, "model.manage")
    grantee, who = _grantee(model=model, user=user, group=group)
    if user is not None and not _holds_directly(user, model):
        return
    if group is not None and not _group_holds(group, model):
        return
    remove_perm(USE_PERMISSION, grantee, model)
    audit.record(
        action="model.access_revoked",
        actor=actor,
        organization=organization,
        target=model,
        data={**who, "restricted_access": model.restricted_access},
    )


def _holds_directly(user: AbstractBaseUser | None, model: LanguageModel) -> bool:
    from guardian.models import UserObjectPermission

    return UserObjectPermission.objects.filter(
        user_id=getattr(user, "pk", None),
        permission__codename="use_languagemodel",
        permission__content_type__app_label="providers",
        object_pk=str(model.pk),
    ).exists()


def _group_holds(group: Group, model: LanguageModel) -> bool:
    from guardian.models import GroupObjectPermission

    return GroupObjectPermission.objects.filter(
        group_id=group.pk,
        permission__codename="use_languagemodel",
        permission__content_type__app_label="providers",
        object_pk=str(model.pk),
    ).exists()


@transaction.atomic
def secrets_rotate(*, actor: Actor) -> dict[str, int]:
    """Re-encrypt every stored secret (provider keys, audit destination secrets) under the first key; each audited.

    Returns counts: {"provider_keys": n, "destination_secrets": m, "organizations": k}. Nothing is changed when
    any secret cannot be decrypted (ValidationError naming it).
    """
    from cryptography.fernet import InvalidToken

    from audit.models import AuditDestination
    from portal.crypto import rotate_secret

    reason = "re-encrypted under the first key of AIRLOCK_ENCRYPTION_KEYS"
    organizations: set[int] = set()

    def rotated(token: str, what: str) -> str:
        try:
            return rotate_secret(token)
        except InvalidToken:
            raise ValidationError(
                {
                    "secret": f"{what}: its secret cannot be decrypted with any key in AIRLOCK_ENCRYPTION_KEYS "
                    "(was a key removed?). Put the old key back at the end of the list and rotate again, "
                    "or enter that secret again. Nothing was changed."
                }
            ) from None

    providers = list(
        Provider.objects.select_for_update().select_related("organization").exclude(api_key_encrypted="").order_by("pk")
    )
    destinations = list(
        AuditDestination.objects.select_for_update()
        .select_related("organization")
        .exclude(secret_encrypted="")
        .order_by("pk")
    )
    for provider in providers:
        provider.api_key_encrypted = rotated(
            provider.api_key_encrypted, f"Provider {provider.organization.slug}/{provider.name}"
        )
        provider.save(update_fields=["api_key_encrypted"])
        mask = _stored_key_mask(provider)
        audit.record(
            action="provider.key_rotated",
            actor=actor,
            organization=provider.organization,
            target=provider,
            data={"before": mask, "after": mask, "reason": reason},
        )
        organizations.add(provider.organization_id)
    for destination in destinations:
        destination.secret_encrypted = rotated(
            destination.secret_encrypted, f"Audit destination {destination.organization.slug}/{destination.name}"
        )
        destination.save(update_fields=["secret_encrypted"])
        mask = "****" + destination.secret_hint if destination.secret_hint else "****"
        audit.record(
            action="destination.key_rotated",
            actor=actor,
            organization=destination.organization,
            target=destination,
            data={"before": mask, "after": mask, "reason": reason},
        )
        organizations.add(destination.organization_id)
    return {
        "provider_keys": len(providers),
        "destination_secrets": len(destinations),
        "organizations": len(organizations),
    }
