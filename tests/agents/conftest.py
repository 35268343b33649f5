"""Helpers of the agent tests."""

from __future__ import annotations

import asyncio
import time

from asgiref.sync import sync_to_async
from django.db import connections

from agents.models import AgentSession, SessionEvent
from agents.services import session_start


async def wait_for_turn(session: AgentSession, seconds: float = 30) -> AgentSession:
    """The turn started by the inline runner when the prompt committed, once it has ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        session = await AgentSession.objects.aget(pk=session.pk)
        if session.status in ("idle", "failed"):
            return session
        await asyncio.sleep(0.05)
    raise AssertionError(f"the turn did not end: {session.status}")


async def start_and_run(user, org, prompt: str) -> tuple[AgentSession, list[dict]]:
    """Start a session with `prompt`, wait for its turn to end; the session as stored and its events on the wire."""
    session = await sync_to_async(session_start)(user=user, organization=org, prompt=prompt)
    await wait_for_turn(session)
    events = [e.as_wire() async for e in SessionEvent.objects.filter(session=session).order_by("seq")]
    await sync_to_async(connections.close_all)()
    return await AgentSession.objects.aget(pk=session.pk), events
