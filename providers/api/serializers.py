"""Serializers of the providers API: never a key, only whether one is stored and its last 4 characters."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from portal.api_inputs import BoundedJSONField
from providers.models import LanguageModel, Provider
from providers.validation import shown_headers

PROVIDER_WRITE_FIELDS = (
    "name",
    "kind",
    "base_url",
    "api_key",
    "clear_api_key",
    "is_simulator",
    "extra_headers",
    "api_version",
    "region",
    "aws_access_key_id",
    "use_ambient_credentials",
)
MODEL_WRITE_FIELDS = (
    "provider",
    "identifier",
    "display_name",
    "context_limit",
    "is_default",
    "is_enabled",
    "compaction_threshold_percent",
    "max_output_tokens",
    "options",
    "input_price_per_mtok",
    "output_price_per_mtok",
    "cache_read_price_per_mtok",
    "cache_write_price_per_mtok",
    "restricted_access",
    "fallback",
)


class LanguageModelSerializer(serializers.ModelSerializer):
    """A model as the UI lists it; `can_use` says whether the requesting user may run agents with it."""

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
            "is_enabled",
            "provider",
            "provider_name",
            "provider_kind",
            "is_simulator",
            "can_use",
            "compaction_threshold_percent",
            "max_output_tokens",
            "options",
            "input_price_per_mtok",
            "output_price_per_mtok",
            "cache_read_price_per_mtok",
            "cache_write_price_per_mtok",
            "restricted_access",
            "fallback",
        ]
        read_only_fields = fields

    def get_can_use(self, obj: LanguageModel) -> bool:
        """Whether the requesting user may run agents with this model (computed in the list query)."""
        return bool(getattr(obj, "usable", False))


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
            "extra_headers",
            "api_version",
            "region",
            "aws_access_key_id",
            "use_ambient_credentials",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    def to_representation(self, instance: Provider) -> dict[str, Any]:
        """The provider, a credential header's value shown as "(unchanged)" (sending that back keeps it)."""
        data = super().to_representation(instance)
        data["extra_headers"] = shown_headers(instance.extra_headers)
        return data


class ProviderWriteSerializer(serializers.Serializer):
    """What a client may send to create or change a provider; `api_key` is write-only (never echoed)."""

    name = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    kind = serializers.CharField(required=False)
    base_url = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    api_key = serializers.CharField(
        required=False, allow_blank=True, allow_null=True, write_only=True, trim_whitespace=False
    )
    clear_api_key = serializers.BooleanField(required=False)
    is_simulator = serializers.BooleanField(required=False)
    extra_headers = BoundedJSONField(required=False, allow_null=True)
    api_version = serializers.CharField(required=False, allow_blank=True)
    region = serializers.CharField(required=False, allow_blank=True)
    aws_access_key_id = serializers.CharField(required=False, allow_blank=True)
    use_ambient_credentials = serializers.BooleanField(required=False)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """Refuse unknown fields by name instead of ignoring them."""
        _refuse_unknown(data, PROVIDER_WRITE_FIELDS)
        return super().to_internal_value(data)


class ModelWriteSerializer(serializers.Serializer):
    """What a client may send to create or change a model; numbers, options and prices are checked by the service."""

    provider = serializers.IntegerField(required=False)
    identifier = serializers.CharField(required=False, allow_blank=True)
    display_name = serializers.CharField(required=False, allow_blank=True)
    context_limit = BoundedJSONField(required=False)
    is_default = serializers.BooleanField(required=False)
    is_enabled = serializers.BooleanField(required=False)
    compaction_threshold_percent = BoundedJSONField(required=False)
    max_output_tokens = BoundedJSONField(required=False, allow_null=True)
    options = BoundedJSONField(required=False, allow_null=True)
    input_price_per_mtok = BoundedJSONField(required=False)
    output_price_per_mtok = BoundedJSONField(required=False)
    cache_read_price_per_mtok = BoundedJSONField(required=False)
    cache_write_price_per_mtok = BoundedJSONField(required=False)
    restricted_access = serializers.BooleanField(required=False)
    fallback = serializers.IntegerField(required=False, allow_null=True)

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        """Refuse unknown fields by name instead of ignoring them."""
        _refuse_unknown(data, MODEL_WRITE_FIELDS)
        return super().to_internal_value(data)


class AccessSerializer(serializers.Serializer):
    """One user (by username) or one group (by name) whose access to a restricted model changes."""

    user = serializers.CharField(required=False)
    group = serializers.CharField(required=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Exactly one of user or group."""
        if bool(attrs.get("user")) == bool(attrs.get("group")):
            raise serializers.ValidationError({"user": "Give exactly one of user (a username) or group (a name)."})
        return attrs


class CheckRequestSerializer(serializers.Serializer):
    """Optionally, the id of one of the provider's models to check as well."""

    model = serializers.IntegerField(required=False, allow_null=True)


def _refuse_unknown(data: Any, allowed: tuple[str, ...]) -> None:
    if not hasattr(data, "keys"):
        raise serializers.ValidationError({"non_field_errors": ["Send a JSON object."]})
    unknown = sorted(set(data.keys()) - set(allowed))
    if unknown:
        raise serializers.ValidationError(
            {name: [f"Unknown field: use only {', '.join(allowed)}."] for name in unknown}
        )
