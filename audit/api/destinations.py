"""API of SIEM destinations: owners manage them, owners and auditors see them with lag and last error.

The secret (HEC token, HMAC secret) is write-only: responses show `has_secret` and at most its last 4 characters.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from audit.forwarding.selectors import destinations_for_user, with_lag
from audit.forwarding.services import (
    destination_create,
    destination_delete,
    destination_test,
    destination_update,
)
from audit.models import AuditDestination, DestinationKind
from organizations.api.base import OrganizationScopedViewSet
from portal.api_inputs import BoundedJSONField


class DestinationSerializer(serializers.ModelSerializer):
    """A destination as owners and auditors see it: settings, cursor, lag and last error; never the secret."""

    has_secret = serializers.SerializerMethodField()
    has_client_key = serializers.SerializerMethodField()
    head_sequence = serializers.IntegerField(read_only=True)
    lag = serializers.IntegerField(read_only=True)

    class Meta:
        model = AuditDestination
        fields = [
            "id",
            "name",
            "kind",
            "url",
            "host",
            "port",
            "use_tls",
            "ca_certificate",
            "has_secret",
            "secret_hint",
            "client_certificate",
            "has_client_key",
            "options",
            "enabled",
            "delivered_sequence",
            "head_sequence",
            "lag",
            "last_success_at",
            "last_error",
            "last_error_at",
            "consecutive_failures",
            "next_attempt_at",
            "created_at",
        ]
        read_only_fields = fields

    def get_has_secret(self, obj: AuditDestination) -> bool:
        """Whether a token / HMAC secret is stored."""
        return bool(obj.secret_encrypted)

    def get_has_client_key(self, obj: AuditDestination) -> bool:
        """Whether the client certificate's private key is stored (it is never shown)."""
        return bool(obj.client_key_encrypted)


class DestinationWriteSerializer(serializers.Serializer):
    """The fields an owner may send; the service validates them per kind."""

    name = serializers.CharField(required=False, allow_blank=True, max_length=200)
    kind = serializers.ChoiceField(choices=DestinationKind.choices, required=False)
    url = serializers.CharField(required=False, allow_blank=True, max_length=1000)
    host = serializers.CharField(required=False, allow_blank=True, max_length=300)
    port = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=65535)
    use_tls = serializers.BooleanField(required=False)
    ca_certificate = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    secret = serializers.CharField(required=False, allow_blank=True, write_only=True, max_length=5000)
    client_certificate = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    client_key = serializers.CharField(required=False, allow_blank=True, write_only=True, trim_whitespace=False)
    options = BoundedJSONField(required=False)
    enabled = serializers.BooleanField(required=False)


class ProbeResultSerializer(serializers.Serializer):
    """What a test message did."""

    ok = serializers.BooleanField()
    error = serializers.CharField(allow_blank=True)


class DestinationViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    OrganizationScopedViewSet,
):
    """SIEM destinations of an organization (Splunk HEC, signed webhook, syslog)."""

    serializer_class = DestinationSerializer
    lookup_value_regex = "[0-9a-fA-F-]{36}"

    def scoped_queryset(self) -> QuerySet:
        """Destinations of this organization, with lag; 403 unless owner or auditor."""
        return destinations_for_user(user=self.request.user, organization=self.organization)

    def get_serializer_class(self) -> type[serializers.Serializer]:
        """Writes take the write serializer; answers always use the read one."""
        if self.action in ("create", "update", "partial_update"):
            return DestinationWriteSerializer
        return DestinationSerializer

    def _answer(self, destination: AuditDestination, status_code: int = status.HTTP_200_OK) -> Response:
        fresh = with_lag(AuditDestination.objects.filter(pk=destination.pk)).get()
        return Response(DestinationSerializer(fresh).data, status=status_code)

    @extend_schema(request=DestinationWriteSerializer, responses={201: DestinationSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Add a destination (owners); `options.replay_from` = 0 sends the whole history, else from now on."""
        incoming = DestinationWriteSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        if "kind" not in data:
            raise serializers.ValidationError({"kind": f"Give the kind: one of {', '.join(DestinationKind.values)}."})
        destination = destination_create(actor=request.user, organization=self.organization, **data)
        return self._answer(destination, status.HTTP_201_CREATED)

    @extend_schema(request=DestinationWriteSerializer, responses={200: DestinationSerializer})
    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Change a destination (owners); send `secret` only to replace it."""
        destination = self.get_object()
        incoming = DestinationWriteSerializer(data=request.data, partial=True)
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        kind = data.pop("kind", None)
        if kind is not None and kind != destination.kind:
            raise serializers.ValidationError({"kind": "The kind of a destination cannot change: add a new one."})
        destination = destination_update(actor=request.user, destination=destination, **data)
        return self._answer(destination)

    def destroy(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Remove a destination (owners)."""
        destination_delete(actor=request.user, destination=self.get_object())
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses={200: ProbeResultSerializer})
    @action(detail=True, methods=["post"], url_path="test")
    def test(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        """Send one test message (owners); the answer says whether the receiver acknowledged it."""
        result = destination_test(actor=request.user, destination=self.get_object())
        return Response({"ok": result.ok, "error": result.error})
