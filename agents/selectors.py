"""Reads of the agents app, always scoped to the requesting user."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from agents.models import AgentSession, SessionEvent
from organizations.models import Organization


def sessions_for_user(*, user: AbstractBaseUser | AnonymousUser, organization: Organization) -> QuerySet:
    """Sessions of an organization that the user may see, newest first."""
    return (
        AgentSession.objects.for_user(user)
        .filter(organization=organization)
        .select_related("model", "created_by")
        .order_by("-created_at")
    )


def session_for_user(*, user: AbstractBaseUser | AnonymousUser, session_id: uuid.UUID) -> AgentSession | None:
    """One session if the user may see it; None for a missing or foreign one (callers answer 404)."""
    return AgentSession.objects.for_user(user).filter(pk=session_id).first()


def session_events_after(
    *, session_id: uuid.UUID, after: int, until: int | None = None, limit: int = 500
) -> list[dict[str, Any]]:
    """Stored events of a session with seq > after (and <= until), as sent on the wire."""
    events = SessionEvent.objects.filter(session_id=session_id, seq__gt=after)
    if until is not None:
        events = events.filter(seq__lte=until)
    return [
        {"seq": seq, "type": type_, **payload}
        for seq, type_, payload in events.order_by("seq").values_list("seq", "type", "payload")[:limit]
    ]
