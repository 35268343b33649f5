"""Forms of the provider and model settings pages: parse what a person typed; the services decide the rest."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError
from django.db.models import QuerySet

from organizations.models import Organization
from providers.models import LanguageModel, Provider, ProviderKind
from providers.selectors import access_user
from providers.validation import REASONING_EFFORTS, shown_headers

# Which optional settings each kind uses (name and base_url are shown for every kind; api_key too).
KIND_FIELDS: dict[str, frozenset[str]] = {
    ProviderKind.ANTHROPIC: frozenset({"extra_headers"}),
    ProviderKind.OPENAI: frozenset({"extra_headers"}),
    ProviderKind.AZURE_OPENAI: frozenset({"extra_headers", "api_version"}),
    ProviderKind.GOOGLE: frozenset({"extra_headers"}),
    ProviderKind.BEDROCK: frozenset({"region", "aws_access_key_id", "use_ambient_credentials"}),
    ProviderKind.OPENAI_COMPATIBLE: frozenset({"extra_headers"}),
}
KIND_SPECIFIC = frozenset().union(*KIND_FIELDS.values())

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

REASONING_CHOICES = [("", "— vendor default —"), *((effort, effort) for effort in REASONING_EFFORTS)]


OPTION_NAMES = ("temperature", "reasoning_effort", "thinking_budget_tokens")


def kinds_using(field: str) -> str:
    """The kinds that use an optional setting, space-separated (for the page's per-kind display)."""
    if field not in KIND_SPECIFIC:
        return ""
    return " ".join(kind for kind, fields in KIND_FIELDS.items() if field in fields)


def headers_as_text(headers: dict[str, Any] | None) -> str:
    """Stored headers as the textarea shows them, credential values replaced by HEADER_KEEP."""
    return "\n".join(f"{name}: {value}" for name, value in shown_headers(headers).items())


def parse_headers(text: str) -> dict[str, str]:
    """Parse "Name: value" lines; ValidationError names the line. A value left as HEADER_KEEP stays so: the
    service puts the stored value back (`providers.validation.keep_stored_headers`)."""
    headers: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        name, sep, value = line.partition(":")
        name, value = name.strip(), value.strip()
        if not sep or not name:
            raise ValidationError(f"Line {number}: write one header per line as Name: value (e.g. X-Title: Airlock).")
        if not _HEADER_NAME.match(name):
            raise ValidationError(f"Line {number}: {name[:60]!r} is not a valid header name.")
        headers[name] = value
    return headers


def apply_service_errors(form: forms.Form, error: ValidationError) -> None:
    """Show a service's ValidationError next to the fields it names; anything else above the form."""
    if not hasattr(error, "error_dict"):
        form.add_error(None, error)
        return
    for field, errors in error.message_dict.items():
        target = field.split(".")[-1] if field.startswith("options.") else field
        if field == "options":  # "temperature must be ..." belongs next to the temperature field
            target = next((name for name in OPTION_NAMES if any(m.startswith(name) for m in errors)), field)
        if target in form.fields:
            form.add_error(target, errors)
        else:
            form.add_error(None, [f"{field}: {message}" for message in errors])


class ProviderForm(forms.Form):
    """Add or edit a provider. The key is write-only: never rendered, blank on edit keeps the stored one."""

    name = forms.CharField(max_length=100, help_text="How people will see this endpoint, e.g. vLLM on gpu-1.")
    kind = forms.ChoiceField(
        choices=ProviderKind.choices,
        initial=ProviderKind.OPENAI_COMPATIBLE,
        help_text="The wire protocol the endpoint speaks.",
    )
    base_url = forms.CharField(
        label="Base URL",
        required=False,
        max_length=500,
        help_text="Required for openai-compatible (e.g. http://vllm:8000/v1) and azure-openai "
        "(https://NAME.openai.azure.com). Optional for the others: a gateway or private endpoint in front of "
        "the vendor.",
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="All kinds (bedrock: the AWS secret access key; optional for servers without auth). Stored "
        "encrypted; only its last 4 characters are ever shown.",
    )
    clear_api_key = forms.BooleanField(label="Remove the stored key", required=False)
    extra_headers = forms.CharField(
        label="Extra headers",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false"}),
        help_text="All kinds but bedrock (gateways, OpenRouter): one header per line, Name: value, e.g. X-Team: ml. "
        "Stored in plain text: a credential belongs in the API key.",
    )
    api_version = forms.CharField(
        label="API version", required=False, max_length=40, help_text="azure-openai only, e.g. 2024-10-21."
    )
    region = forms.CharField(
        label="AWS region", required=False, max_length=40, help_text="bedrock only, e.g. us-east-1."
    )
    aws_access_key_id = forms.CharField(
        label="AWS access key id", required=False, max_length=128, help_text="bedrock only, with a stored secret key."
    )
    use_ambient_credentials = forms.BooleanField(
        label="Use the server's own AWS role",
        required=False,
        help_text="bedrock only: no stored key; the control plane's instance or pod role signs the calls.",
    )

    def __init__(self, *args: Any, provider: Provider | None = None, **kwargs: Any) -> None:
        self.provider = provider
        if provider is not None:
            kwargs.setdefault(
                "initial",
                {
                    "name": provider.name,
                    "kind": provider.kind,
                    "base_url": provider.base_url,
                    "extra_headers": headers_as_text(provider.extra_headers),
                    "api_version": provider.api_version,
                    "region": provider.region,
                    "aws_access_key_id": provider.aws_access_key_id,
                    "use_ambient_credentials": provider.use_ambient_credentials,
                },
            )
        super().__init__(*args, **kwargs)
        if provider is None:
            del self.fields["clear_api_key"]
        else:
            # The kind is what the provider is: to change it, add another provider.
            del self.fields["kind"]
            used = KIND_FIELDS.get(provider.kind, frozenset())
            for field in KIND_SPECIFIC - used:
                del self.fields[field]
            self.fields["api_key"].help_text = (
                f"Leave blank to keep the stored key ({provider_key_label(provider)}). "
                + ("AWS secret access key. " if provider.kind == ProviderKind.BEDROCK else "")
                + "Only its last 4 characters are ever shown."
            )
        for name, field in self.fields.items():
            field.kinds = kinds_using(name)  # the page hides settings the picked kind does not use

    def clean_extra_headers(self) -> dict[str, str]:
        """The headers as a dict."""
        return parse_headers(self.cleaned_data.get("extra_headers") or "")

    def create_arguments(self) -> dict[str, Any]:
        """Keyword arguments for provider_create: name, kind, and the settings this kind uses (when given)."""
        data = self.cleaned_data
        kind = data["kind"]
        arguments: dict[str, Any] = {"name": data["name"], "kind": kind}
        for field in ("base_url", "api_key"):
            if data.get(field):
                arguments[field] = data[field]
        for field in KIND_FIELDS.get(kind, frozenset()):
            if data.get(field):
                arguments[field] = data[field]
        return arguments

    def update_changes(self) -> dict[str, Any]:
        """Keyword arguments for provider_update: only what differs from the stored provider."""
        assert self.provider is not None
        data, provider = self.cleaned_data, self.provider
        changes: dict[str, Any] = {}
        for field in ("name", "base_url", *sorted(KIND_SPECIFIC)):
            if field in self.fields and data.get(field) != getattr(provider, field):
                if field == "extra_headers" and not data[field] and not provider.extra_headers:
                    continue
                changes[field] = data[field]
        if data.get("api_key"):
            changes["api_key"] = data["api_key"]
        elif data.get("clear_api_key"):
            changes["clear_api_key"] = True
        return changes


def provider_key_label(provider: Provider) -> str:
    """How a stored key is described on a page: "key •••• abcd", "key stored" or "no key"."""
    if not provider.has_api_key:
        return "no key"
    return f"key •••• {provider.api_key_hint}" if provider.api_key_hint else "key stored"


_PRICE_HELP = "US$ per million tokens."


def _price(label: str) -> forms.DecimalField:
    return forms.DecimalField(
        label=label, required=False, min_value=0, max_digits=12, decimal_places=6, help_text=_PRICE_HELP
    )


class LanguageModelForm(forms.Form):
    """Add or edit a model: every field the model has; the provider is fixed once created."""

    provider = forms.ModelChoiceField(queryset=Provider.objects.none(), empty_label=None)
    identifier = forms.CharField(max_length=200, help_text="The name the provider expects, e.g. gpt-4o, llama3.1:8b.")
    display_name = forms.CharField(
        max_length=200, required=False, help_text="What members pick in the chat (defaults to the identifier)."
    )
    context_limit = forms.IntegerField(label="Context limit", help_text="Context window in tokens, e.g. 128000.")
    is_enabled = forms.BooleanField(label="Enabled", required=False, initial=True)
    is_default = forms.BooleanField(label="Make it the organization's default ★", required=False)
    compaction_threshold_percent = forms.IntegerField(
        label="Compaction threshold (%)",
        initial=80,
        help_text="Compact the conversation when it fills this share of the context window (1–100).",
    )
    max_output_tokens = forms.IntegerField(
        label="Max output tokens", required=False, help_text="Leave blank for the vendor's default."
    )
    temperature = forms.DecimalField(label="Temperature", required=False, max_digits=4, decimal_places=2)
    reasoning_effort = forms.ChoiceField(
        label="Reasoning effort", choices=REASONING_CHOICES, required=False, help_text="OpenAI reasoning models."
    )
    thinking_budget_tokens = forms.IntegerField(
        label="Thinking budget (tokens)", required=False, help_text="Anthropic and Gemini extended thinking."
    )
    input_price_per_mtok = _price("Input price")
    output_price_per_mtok = _price("Output price")
    cache_read_price_per_mtok = _price("Cache read price")
    cache_write_price_per_mtok = _price("Cache write price")
    restricted_access = forms.BooleanField(
        label="Restricted access",
        required=False,
        help_text="Off: every agents user may use it. On: only users and groups granted access.",
    )
    fallback = forms.ModelChoiceField(
        queryset=LanguageModel.objects.none(),
        required=False,
        empty_label="— none —",
        help_text="Called when this model still fails after its retries.",
    )

    OPTION_FIELDS = OPTION_NAMES
    PRICE_FIELDS = (
        "input_price_per_mtok",
        "output_price_per_mtok",
        "cache_read_price_per_mtok",
        "cache_write_price_per_mtok",
    )
    PLAIN_FIELDS = (
        "display_name",
        "context_limit",
        "is_enabled",
        "compaction_threshold_percent",
        "max_output_tokens",
        "restricted_access",
        "fallback",
        *PRICE_FIELDS,
    )

    def __init__(
        self,
        *args: Any,
        providers: QuerySet[Provider],
        models: QuerySet[LanguageModel],
        model: LanguageModel | None = None,
        **kwargs: Any,
    ) -> None:
        self.model = model
        if model is not None:
            initial = {field: getattr(model, field) for field in self.PLAIN_FIELDS if field != "fallback"}
            initial["identifier"] = model.identifier
            initial["fallback"] = model.fallback_id
            for field in self.OPTION_FIELDS:
                initial[field] = (model.options or {}).get(field)
            kwargs.setdefault("initial", initial)
        super().__init__(*args, **kwargs)
        self.fields["provider"].queryset = providers
        self.fields["fallback"].queryset = models.exclude(pk=model.pk) if model is not None else models
        if model is not None:
            del self.fields["provider"]
            del self.fields["is_default"]  # the star button changes the default

    def _options(self) -> dict[str, Any]:
        data = self.cleaned_data
        options: dict[str, Any] = {}
        if data.get("temperature") is not None:
            options["temperature"] = float(data["temperature"])
        if data.get("reasoning_effort"):
            options["reasoning_effort"] = data["reasoning_effort"]
        if data.get("thinking_budget_tokens") is not None:
            options["thinking_budget_tokens"] = data["thinking_budget_tokens"]
        return options

    def _values(self) -> dict[str, Any]:
        data = self.cleaned_data
        values = {field: data.get(field) for field in self.PLAIN_FIELDS}
        for field in self.PRICE_FIELDS:
            if values[field] is None:
                values[field] = Decimal(0)
        values["options"] = self._options()
        return values

    def create_arguments(self) -> dict[str, Any]:
        """Keyword arguments for model_create: the required ones plus every field that differs from its default."""
        data = self.cleaned_data
        arguments: dict[str, Any] = {
            "provider": data["provider"],
            "identifier": data["identifier"],
            "display_name": data.get("display_name") or "",
            "context_limit": data["context_limit"],
        }
        if data.get("is_default"):
            arguments["is_default"] = True
        defaults: dict[str, Any] = {
            "is_enabled": True,
            "compaction_threshold_percent": 80,
            "max_output_tokens": None,
            "restricted_access": False,
            "fallback": None,
            "options": {},
            **{field: Decimal(0) for field in self.PRICE_FIELDS},
        }
        for field, value in self._values().items():
            if field in defaults and value != defaults[field]:
                arguments[field] = value
        return arguments

    def update_changes(self) -> dict[str, Any]:
        """Keyword arguments for model_update: only what differs from the stored model."""
        assert self.model is not None
        model = self.model
        changes: dict[str, Any] = {}
        if self.cleaned_data["identifier"] != model.identifier:
            changes["identifier"] = self.cleaned_data["identifier"]
        for field, value in self._values().items():
            current = model.fallback if field == "fallback" else getattr(model, field)
            if field == "display_name" and not value:
                value = model.identifier
            if field == "options":
                current = current or {}
            if value != current:
                changes[field] = value
        return changes


# --- who may use a model -----------------------------------------------------------------------------------------

ACCESS_CHOICES = [
    ("open", "Open: every agents user of the organization may use it"),
    ("restricted", "Restricted: only the users and groups granted below"),
]


class ModelRestrictionForm(forms.Form):
    """Open a model to every agents user, or restrict it to the users and groups granted access."""

    access = forms.ChoiceField(label="Who may use it", choices=ACCESS_CHOICES, widget=forms.RadioSelect)

    def __init__(self, *args: Any, model: LanguageModel, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"access": "restricted" if model.restricted_access else "open"})
        super().__init__(*args, **kwargs)

    def restricted(self) -> bool:
        """The chosen setting, as the model's `restricted_access` value."""
        return self.cleaned_data["access"] == "restricted"


class ModelAccessForm(forms.Form):
    """One member (by username or email) or one group whose use of a model is granted or revoked."""

    user = forms.CharField(
        label="Member",
        required=False,
        max_length=254,
        help_text="The username or email of a member of this organization.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    group = forms.ModelChoiceField(
        label="Or a group",
        queryset=Group.objects.none(),
        required=False,
        empty_label="— no group —",
        help_text="Every user in the group who may run agents here.",
    )

    def __init__(
        self,
        *args: Any,
        organization: Organization,
        groups: QuerySet[Group],
        grant_holders: QuerySet[Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.organization = organization
        self.grant_holders = grant_holders  # revoking: the users holding a grant, members or not any more
        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = groups
        self.fields["group"].error_messages["invalid_choice"] = f"No such group in {organization.name}: pick one."

    def clean_user(self) -> AbstractBaseUser | None:
        """The member named, or None when the field is blank."""
        name = self.cleaned_data.get("user") or ""
        if not name:
            return None
        return access_user(organization=self.organization, name=name, holders=self.grant_holders)

    def clean(self) -> dict[str, Any]:
        """Exactly one of a member or a group."""
        data = super().clean()
        if self.has_error("user") or self.has_error("group"):
            return data
        if bool(data.get("user")) == bool(data.get("group")):
            raise ValidationError("Name one member or pick one group (not both).")
        return data

    def grantee(self) -> dict[str, Any]:
        """Keyword arguments for model_grant_access / model_revoke_access: user=... or group=..."""
        data = self.cleaned_data
        return {"user": data["user"]} if data.get("user") else {"group": data["group"]}
