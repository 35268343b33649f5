"""LLM providers (endpoints and credentials) and the models an organization offers."""

from __future__ import annotations

import uuid
from decimal import Decimal

from django.conf import settings
from django.db import models
from django.db.models import Q

from organizations.tenancy import TenantQuerySet


class ProviderKind(models.TextChoices):
    """The wire protocol a provider speaks."""

    ANTHROPIC = "anthropic", "Anthropic"
    OPENAI = "openai", "OpenAI"
    AZURE_OPENAI = "azure-openai", "Azure OpenAI"
    GOOGLE = "google", "Google Gemini"
    BEDROCK = "bedrock", "AWS Bedrock"
    OPENAI_COMPATIBLE = "openai-compatible", "OpenAI-compatible (vLLM, Ollama, gateways, the offline simulator)"


class ProviderQuerySet(TenantQuerySet):
    """Providers, scoped to the organizations where the user may see them."""

    view_action = "provider.view"


class Provider(models.Model):
    """An LLM endpoint an organization has configured; the API key is encrypted and never shown again."""

    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="providers")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    # A CharField, not a URLField: internal hostnames without a dot (http://vllm:8000/v1) are normal here;
    # services.validate_base_url checks the scheme and host.
    base_url = models.CharField(max_length=500, blank=True, default="")
    api_key_encrypted = models.TextField(blank=True, default="")
    api_key_hint = models.CharField(max_length=4, blank=True, default="")
    # Kind-specific settings: headers sent on every call (gateways), Azure's API version, AWS region and key id.
    extra_headers = models.JSONField(default=dict, blank=True)
    api_version = models.CharField(max_length=40, blank=True, default="")
    region = models.CharField(max_length=40, blank=True, default="")
    aws_access_key_id = models.CharField(max_length=128, blank=True, default="")
    use_ambient_credentials = models.BooleanField(
        default=False, help_text="Bedrock: use the server's own AWS role instead of a stored access key."
    )
    is_simulator = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProviderQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="provider_unique_org_name")]
        ordering = ["organization_id", "name"]

    def __str__(self) -> str:
        return self.name

    @property
    def has_api_key(self) -> bool:
        """Whether a key is stored (the key itself is never returned)."""
        return bool(self.api_key_encrypted)


class LanguageModelQuerySet(TenantQuerySet):
    """Models, scoped to the organizations where the user may see them."""

    view_action = "model.view"


class LanguageModel(models.Model):
    """A model served by a provider, as offered to an organization's members."""

    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="models")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="models")
    identifier = models.CharField(max_length=200, help_text="The model name the provider expects, e.g. gpt-4o.")
    display_name = models.CharField(max_length=200)
    context_limit = models.PositiveIntegerField(help_text="Context window in tokens.")
    is_default = models.BooleanField(default=False)
    is_enabled = models.BooleanField(default=True, help_text="Disabled models cannot be picked for new sessions.")
    compaction_threshold_percent = models.PositiveSmallIntegerField(
        default=80, help_text="Compact the conversation when it fills this share of the context window."
    )
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    # Vendor options: temperature, reasoning_effort (OpenAI), thinking_budget_tokens (Anthropic, Gemini).
    options = models.JSONField(default=dict, blank=True)
    input_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    output_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    cache_read_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    cache_write_price_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=Decimal(0))
    # False: every member with agents-user may use it; True: only users/groups granted `use_languagemodel`.
    restricted_access = models.BooleanField(default=False)
    fallback = models.ForeignKey(
        "self",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="fallback_for",
        help_text="Model to call when this one fails after its retries.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = LanguageModelQuerySet.as_manager()

    class Meta:
        db_table = "providers_model"
        constraints = [
            models.UniqueConstraint(fields=["organization", "provider", "identifier"], name="model_unique_identifier"),
            models.UniqueConstraint(
                fields=["organization"], condition=Q(is_default=True), name="model_one_default_per_org"
            ),
            models.CheckConstraint(condition=Q(context_limit__gt=0), name="model_context_limit_positive"),
            models.CheckConstraint(
                condition=Q(compaction_threshold_percent__gte=1, compaction_threshold_percent__lte=100),
                name="model_compaction_threshold_percent",
            ),
        ]
        ordering = ["organization_id", "display_name"]
        permissions = [("use_languagemodel", "Can use this model (when its access is restricted)")]

    def __str__(self) -> str:
        return self.display_name


class ModelCallStatus(models.TextChoices):
    """How a model call ended."""

    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"


class ModelCall(models.Model):
    """One call to a model (after retries and fallback): tokens, cost and latency, kept for usage reports."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="+")
    model = models.ForeignKey(LanguageModel, on_delete=models.SET_NULL, null=True, related_name="calls")
    provider_name = models.CharField(max_length=100)
    model_identifier = models.CharField(max_length=200)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    session_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    status = models.CharField(max_length=16, choices=ModelCallStatus.choices)
    stop_reason = models.CharField(max_length=32, blank=True, default="")
    input_tokens = models.PositiveIntegerField(default=0)
    output_tokens = models.PositiveIntegerField(default=0)
    cache_read_tokens = models.PositiveIntegerField(default=0)
    cache_write_tokens = models.PositiveIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=8, default=Decimal(0))
    latency_ms = models.PositiveIntegerField(default=0)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=1)
    fell_back_from = models.CharField(max_length=200, blank=True, default="", help_text="Model that failed first.")
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.model_identifier} {self.status} {self.created_at:%Y-%m-%d %H:%M}"
