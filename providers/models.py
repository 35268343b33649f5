"""LLM providers (endpoints and credentials) and the models an organization offers."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from organizations.tenancy import TenantQuerySet


class ProviderKind(models.TextChoices):
    """The wire protocol a provider speaks."""

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
    created_at = models.DateTimeField(auto_now_add=True)

    objects = LanguageModelQuerySet.as_manager()

    class Meta:
        db_table = "providers_model"
        constraints = [
            models.UniqueConstraint(fields=["organization", "provider", "identifier"], name="model_unique_identifier"),
            models.UniqueConstraint(
                fields=["organization"], condition=Q(is_default=True), name="model_one_default_per_org"
            ),
            models.CheckConstraint(condition=Q(context_limit__gt=0), name="model_context_limit_positive"),
        ]
        ordering = ["organization_id", "display_name"]

    def __str__(self) -> str:
        return self.display_name
