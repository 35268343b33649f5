"""Serializers of the agents API."""

from __future__ import annotations

from rest_framework import serializers

from agents.models import AgentSession


class SessionModelSerializer(serializers.Serializer):
    """The model a session talks to."""

    id = serializers.IntegerField()
    identifier = serializers.CharField()
    display_name = serializers.CharField()


class AgentSessionSerializer(serializers.ModelSerializer):
    """A session as listed and shown."""

    model = SessionModelSerializer(read_only=True)
    created_by = serializers.CharField(source="created_by.get_username", read_only=True)
    stream_url = serializers.SerializerMethodField()

    class Meta:
        model = AgentSession
        fields = ["id", "title", "status", "error", "model", "created_by", "created_at", "updated_at", "stream_url"]
        read_only_fields = fields

    def get_stream_url(self, session: AgentSession) -> str:
        """The websocket path of the session's event stream."""
        return f"/ws/sessions/{session.pk}/"


class SessionCreateSerializer(serializers.Serializer):
    """Input to open a session."""

    prompt = serializers.CharField(trim_whitespace=False, allow_blank=True)
    model = serializers.IntegerField(required=False, allow_null=True, min_value=1)


class PromptSerializer(serializers.Serializer):
    """Input to add a prompt to a session."""

    prompt = serializers.CharField(trim_whitespace=False, allow_blank=True)


class EventsQuerySerializer(serializers.Serializer):
    """Query of the stored events."""

    after = serializers.IntegerField(required=False, default=0, min_value=0)
    limit = serializers.IntegerField(required=False, default=500, min_value=1, max_value=5000)
