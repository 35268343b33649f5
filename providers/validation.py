"""Validation of provider and model input: each error is `ValidationError({field: message})` saying what to fix."""

from __future__ import annotations

import ipaddress
import re
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ValidationError

from organizations.models import Organization
from portal.crypto import masked_secret
from portal.text import encodes_as_utf8
from providers.models import LanguageModel, Provider, ProviderKind

MAX_CONTEXT_LIMIT = 2_147_483_647  # PositiveIntegerField's ceiling


# Kinds that cannot work without a stored key (bedrock: unless it uses the server's ambient AWS role).
KEY_REQUIRED_KINDS = frozenset(
    {ProviderKind.ANTHROPIC, ProviderKind.OPENAI, ProviderKind.AZURE_OPENAI, ProviderKind.GOOGLE}
)


BASE_URL_REQUIRED_KINDS = frozenset({ProviderKind.OPENAI_COMPATIBLE, ProviderKind.AZURE_OPENAI})


# Headers that carry credentials: they belong in the encrypted api_key, not in plain-text extra_headers.
CREDENTIAL_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "x-goog-api-key", "proxy-authorization"})


HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
# Header values that are credentials (a gateway's own key, say) are never shown again: pages and the API show
# this instead, a header sent back with it keeps the stored value, and the audit log has only a masked hint.
HEADER_KEEP = "(unchanged)"
_SECRET_HEADER = re.compile(r"auth|key|token|secret|cookie|password|credential|signature", re.IGNORECASE)


def is_secret_header(name: str) -> bool:
    """Whether a header's value is a credential that must never be shown again."""
    return bool(_SECRET_HEADER.search(name))


def shown_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """Stored headers as pages and the API show them: credential values replaced by HEADER_KEEP."""
    return {name: HEADER_KEEP if is_secret_header(name) else value for name, value in (headers or {}).items()}


def audited_headers(headers: dict[str, Any] | None) -> dict[str, Any]:
    """Stored headers as the audit log keeps them: credential values as "****" and their last four characters."""
    return {
        name: masked_secret(str(value)) if is_secret_header(name) else value for name, value in (headers or {}).items()
    }


def keep_stored_headers(headers: Any, *, stored: dict[str, Any] | None) -> Any:
    """The headers with every HEADER_KEEP value replaced by the stored one; ValidationError if none is stored."""
    if not isinstance(headers, dict):
        return headers  # validate_extra_headers says what is wrong with it
    kept = {}
    for name, value in headers.items():
        if value == HEADER_KEEP:
            if not stored or name not in stored:
                raise ValidationError({"extra_headers": f"Give a value for the header {name!r}: none is stored."})
            value = stored[name]
        kept[name] = value
    return kept


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


def reject_unknown_names(names: set[str], allowed: frozenset[str], what: str) -> None:
    unknown = sorted(names - allowed)
    if unknown:
        raise ValidationError(
            {"__all__": f"Unknown {what} field(s): {', '.join(unknown)}. Use only: {', '.join(sorted(allowed))}."}
        )


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
    if not _valid_host(parts.hostname):
        raise ValidationError(
            {
                field: f"{parts.hostname[:100]!r} is not a valid host name: each dot-separated part needs 1 to 63 "
                f"characters ({example})."
            }
        )
    if parts.username or parts.password:
        raise ValidationError({field: "Remove the user name / password from the base URL: put the key in api_key."})
    if parts.query or parts.fragment:
        raise ValidationError({field: f"Remove the query string or fragment from the base URL ({example})."})
    return url


def _valid_host(hostname: str) -> bool:
    """An IP address, or a host name whose labels DNS can carry (1 to 63 characters each, as IDNA encodes them)."""
    try:
        ipaddress.ip_address(hostname)
        return True
    except ValueError:
        pass
    try:
        hostname.rstrip(".").encode("idna")
    except UnicodeError:
        return False
    return len(hostname) <= 253


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
        if any(ch in value for ch in "\r\n\0") or len(value) > 1000 or not encodes_as_utf8(value):
            raise ValidationError(
                {"extra_headers": f"Header {header!r}: the value must be one line of at most 1000 characters."}
            )
        if header.lower() in {existing.lower() for existing in clean}:
            raise ValidationError({"extra_headers": f"Header {header!r} is given twice."})
        clean[header] = value.strip()
    return clean


def clean_text(value: Any, *, field: str, limit: int) -> str:
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


def clean_base_url(kind: str, base_url: str) -> str:
    url = str(base_url or "").strip()
    return validate_base_url(url) if (url or kind in BASE_URL_REQUIRED_KINDS) else ""


def positive_int(value: Any, *, field: str, message: str, ceiling: int = MAX_CONTEXT_LIMIT) -> int:
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
    return positive_int(context_limit, field="context_limit", message=message)


def validate_compaction_threshold(value: Any) -> int:
    """A percentage from 1 to 100; else ValidationError on `compaction_threshold_percent`."""
    message = "Give the compaction threshold as a whole percentage from 1 to 100 (e.g. 80)."
    return positive_int(value, field="compaction_threshold_percent", message=message, ceiling=100)


def validate_max_output_tokens(value: Any, *, context_limit: int) -> int | None:
    """None, or a positive token count below the context window; else ValidationError on `max_output_tokens`."""
    if value is None or value == "":
        return None
    message = (
        "Give the most tokens one answer may have: a whole number above 0 and below the context limit "
        f"({context_limit})."
    )
    tokens = positive_int(value, field="max_output_tokens", message=message)
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
    if price >= Decimal(10**6) or price != price.quantize(Decimal("0.000001")):
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
            {"options": f"Unknown option(s) {', '.join(map(ascii, unknown))}: use {', '.join(allowed)}."}
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


def duplicate_identifier(provider: Provider, identifier: str) -> str:
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
        raise ValidationError({"identifier": duplicate_identifier(provider, clean)})
    return clean


def clean_display_name(display_name: Any, identifier: str) -> str:
    clean = str(display_name or "").strip() or identifier
    if len(clean) > 200:
        raise ValidationError({"display_name": "The display name is longer than 200 characters."})
    return clean


def clean_model_fields(
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
