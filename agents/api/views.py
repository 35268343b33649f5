"""The agents API: open a session with a prompt, follow up, read its stored events."""

from __future__ import annotations

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from agents.api.serializers import (
    AgentSessionSerializer,
    EventsQuerySerializer,
    PromptSerializer,
    SessionCreateSerializer,
)
from agents.selectors import session_events_after, sessions_for_user
from agents.services import session_add_prompt, session_start
from organizations.api.base import OrganizationScopedViewSet


class AgentSessionViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, OrganizationScopedViewSet):
    """Agent sessions of an organization that the requesting user may see."""

    serializer_class = AgentSessionSerializer

    def scoped_queryset(self) -> QuerySet:
        """Sessions the user may see in this organization."""
        return sessions_for_user(user=self.request.user, organization=self.organization)

    @extend_schema(request=SessionCreateSerializer, responses={201: AgentSessionSerializer})
    def create(self, request: Request, org_slug: str) -> Response:
        """Open a session with a first prompt; the agent starts working at once."""
        data = SessionCreateSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = session_start(
            user=request.user,
            organization=self.organization,
            prompt=data.validated_data["prompt"],
            model_id=data.validated_data.get("model"),
        )
        session = self.get_queryset().get(pk=session.pk)
        return Response(AgentSessionSerializer(session).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=PromptSerializer, responses={202: AgentSessionSerializer})
    @action(detail=True, methods=["post"])
    def prompts(self, request: Request, org_slug: str, pk: str) -> Response:
        """Add a follow-up prompt to an idle session."""
        session = self.get_object()
        data = PromptSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        session = session_add_prompt(user=request.user, session=session, prompt=data.validated_data["prompt"])
        return Response(
            AgentSessionSerializer(self.get_queryset().get(pk=session.pk)).data, status=status.HTTP_202_ACCEPTED
        )

    @extend_schema(parameters=[EventsQuerySerializer])
    @action(detail=True, methods=["get"])
    def events(self, request: Request, org_slug: str, pk: str) -> Response:
        """Stored events with seq > after, oldest first (the same events the websocket sends)."""
        session = self.get_object()
        query = EventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        events = session_events_after(
            session_id=session.pk, after=query.validated_data["after"], limit=query.validated_data["limit"]
        )
        return Response({"results": events})
