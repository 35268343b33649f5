"""Helpers of the agent tests."""

from __future__ import annotations

import asyncio
import time

from agents.models import AgentSession


async def wait_for_turn(session: AgentSession, seconds: float = 30) -> AgentSession:
    """The turn started by the inline runner when the prompt committed, once it has ended."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        session = await AgentSession.objects.aget(pk=session.pk)
        if session.status in ("idle", "failed"):
            return session
        await asyncio.sleep(0.05)
    raise AssertionError(f"the turn did not end: {session.status}")
