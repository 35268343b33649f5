"""Serializers of the providers API: never a key, only whether one is stored and its last 4 characters."""

from __future__ import annotations

from rest_framework import serializers

from providers.models import LanguageModel, Provider


class LanguageModelSerializer(serializers.ModelSerializer):
    """A model as the UI lists it; `is_simulator` lets it label the offline simulator."""

    provider_name = serializers.CharField(source="provider.name", read_only=True)
    provider_kind = serializers.CharField(source="provider.kind", read_only=True)
    is_simulator = serializers.BooleanField(source="provider.is_simulator", read_only=True)
    can_use = serializers.SerializerMethodField()

    class Meta:
        model = LanguageModel
        fields = [
            "id",
            "identifier",
            "display_name",
            "context_limit",
            "is_default",
            "provider_name",
            "provider_kind",
            "is_simulator",
            "can_use",
        ]
        read_only_fields = fields

    def get_can_use(self, obj: LanguageModel) -> bool:
        """Whether the requesting user may run agents with this model (decided once per request)."""
        return bool(self.context.get("can_use", False))


class ProviderSerializer(serializers.ModelSerializer):
    """A provider for owners and auditors; the key itself never leaves the server."""

    has_api_key = serializers.BooleanField(read_only=True)

    class Meta:
        model = Provider
        fields = [
            "id",
            "name",
            "kind",
            "base_url",
            "is_simulator",
            "has_api_key",
            "api_key_hint",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields
