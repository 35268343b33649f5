"""Agent sessions, their conversation and the replayable stream of events."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models
from django.db.models import Q

from organizations.models import MembershipRole
from organizations.permissions import roles_for
from organizations.tenancy import TenantQuerySet


class SessionStatus(models.TextChoices):
    """Where an agent session stands."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    IDLE = "idle", "Waiting for a prompt"
    FAILED = "failed", "Failed"


class AgentSessionQuerySet(TenantQuerySet):
    """Sessions a user may see: their own (as an agents user), or all of an org as owner or auditor."""

    def for_user(self, user: AbstractBaseUser | AnonymousUser, action: str | None = None) -> AgentSessionQuerySet:
        """One query: sessions in orgs where the user sees all, plus their own where they may run agents."""
        if not user.is_authenticated:
            return self.none()
        if user.is_superuser:
            return self.all()
        grants = MembershipRole.objects.filter(membership__user_id=user.pk)
        sees_all = grants.filter(role__in=roles_for("session.view_all")).values("membership__organization_id")
        runs_agents = grants.filter(role__in=roles_for("session.create")).values("membership__organization_id")
        return self.filter(Q(organization_id__in=sees_all) | Q(created_by_id=user.pk, organization_id__in=runs_agents))


class AgentSession(models.Model):
    """A conversation between a user and the agent, tied to one model and (once needed) a workspace."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    organization = models.ForeignKey("organizations.Organization", on_delete=models.CASCADE, related_name="sessions")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="agent_sessions")
    model = models.ForeignKey("providers.LanguageModel", on_delete=models.PROTECT, related_name="sessions")
    workspace = models.ForeignKey(
        "workspaces.Workspace", on_delete=models.SET_NULL, null=True, blank=True, related_name="sessions"
    )
    title = models.CharField(max_length=200)
    status = models.CharField(max_length=16, choices=SessionStatus.choices, default=SessionStatus.QUEUED)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AgentSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title


class MessageRole(models.TextChoices):
    """Who a message in the conversation is from."""

    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"
    TOOL = "tool", "Tool result"


class Message(models.Model):
    """One message of the conversation as the model sees it."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="messages")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True, default="")
    tool_calls = models.JSONField(default=list, blank=True)
    # The vendor's opaque reasoning of an assistant answer ({"kind": ..., "blocks": [...]}, see
    # providers.clients.ReasoningState), sent back verbatim with this message to the same kind of vendor.
    reasoning = models.JSONField(default=dict, blank=True)
    tool_call_id = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "position"], name="message_unique_position")]
        ordering = ["session_id", "position"]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:60]}"


class SessionEvent(models.Model):
    """One event of a session's stream, stored so that a client can replay from any `seq`."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=32)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["session", "seq"], name="session_event_unique_seq")]
        ordering = ["session_id", "seq"]

    def __str__(self) -> str:
        return f"{self.session_id}#{self.seq} {self.type}"

    def as_wire(self) -> dict:
        """The event as sent over the websocket."""
        return {"seq": self.seq, "type": self.type, **self.payload}
