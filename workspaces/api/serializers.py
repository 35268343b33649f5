"""Serializers of the workspace templates API."""

from __future__ import annotations

from rest_framework import serializers

from workspaces.models import WorkspaceBackend, WorkspaceTemplate
from workspaces.services.templates import DESCRIPTION_MAX_CHARS, NAME_MAX_CHARS, TEMPLATE_FIELD_ORDER


class WorkspaceTemplateSerializer(serializers.ModelSerializer):
    """A template as members see it: what the agent chooses by, and the limits it runs within."""

    class Meta:
        model = WorkspaceTemplate
        fields = ["id", *TEMPLATE_FIELD_ORDER, "created_at", "updated_at"]
        read_only_fields = fields


class WorkspaceTemplateWriteSerializer(serializers.Serializer):
    """What a create or a change may send; the service checks the values and names the field at fault."""

    # Lengths only as a first bound; the service names the exact rule (NAME_PATTERN, DESCRIPTION_MAX_CHARS).
    name = serializers.CharField(required=False, trim_whitespace=True, max_length=NAME_MAX_CHARS)
    description = serializers.CharField(required=False, allow_blank=True, max_length=DESCRIPTION_MAX_CHARS)
    backend = serializers.ChoiceField(required=False, choices=WorkspaceBackend.choices)
    command_timeout_seconds = serializers.IntegerField(required=False, allow_null=True)
    output_cap_bytes = serializers.IntegerField(required=False, allow_null=True)
    memory_limit_mb = serializers.IntegerField(required=False, allow_null=True)
    is_enabled = serializers.BooleanField(required=False)
